/**
 * Descriptors of this process that a child would inherit. fuse-native opens /dev/fuse without
 * close-on-exec, so every server the agent starts (smbd, ganesha, tgtd, rpcbind) would hold the FUSE
 * connections open: after a kill -9 of the agent its mounts then stay alive as long as those servers.
 * Node and libuv open everything else close-on-exec.
 */
import { readdirSync, readFileSync } from 'node:fs';

const O_CLOEXEC = 0o2000000;

/** Descriptors above stderr without close-on-exec (from /proc/self/fdinfo: their `flags:` line, octal). */
export function inheritableDescriptors(): number[] {
  const out: number[] = [];
  let names: string[];
  try {
    names = readdirSync('/proc/self/fdinfo');
  } catch {
    return out; // not Linux: nothing known to close
  }
  for (const name of names) {
    const fd = Number(name);
    if (!(fd > 2)) continue;
    try {
      const flags = /^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${name}`, 'utf8'))?.[1];
      if (flags !== undefined && (parseInt(flags, 8) & O_CLOEXEC) === 0) out.push(fd);
    } catch {
      // closed while we looked (readdir's own descriptor among them)
    }
  }
  return out;
}

/**
 * The command line that runs `command args` with the given descriptors closed first, through bash
 * (dash takes single-digit descriptors only) and `exec`, so the server keeps the pid we spawned.
 */
export function withoutDescriptors(command: string, args: string[], fds: number[]): { command: string; args: string[] } {
  if (!fds.length) return { command, args };
  const closes = fds.map((fd) => `exec ${fd}<&-`).join('; ');
  return { command: 'bash', args: ['-c', `${closes}; exec "$0" "$@"`, command, ...args] };
}
