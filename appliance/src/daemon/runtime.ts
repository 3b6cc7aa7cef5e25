/**
 * The agent's private runtime directory and the leftovers a killed agent leaves in it.
 *
 *   RUNTIME/               0700
 *     agent.pid            the running agent
 *     control.sock         0600, the control socket
 *     blocks/NAME/disk.img FUSE files of block devices
 *     trees/NAME           kernel mounts (loop devices over disks or FUSE files)
 *     smb/ nfs/ iscsi/     server configs (0600), state, and server.pid ("PID\nCOMMAND LINE");
 *                          nfs/rpcbind.pid when the agent started rpcbind for NFSv3
 *
 * Clearing leftovers, in dependency order: stray servers (matched by pid *and* command line, so a
 * reused pid is never killed), then the dead FUSE connections (aborted through fusectl), then kernel
 * mounts and FUSE mounts under RUNTIME, then loop devices whose backing file is under RUNTIME or is
 * one of our disk sources.
 */
import { promises as fsp } from 'node:fs';
import { join, resolve } from 'node:path';
import { BridgeError } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { killMatching } from '../exports/procs.js';
import { tryRun } from '../exports/run.js';
import { stopStrayTgtd } from '../exports/tgt.js';
import { detachLoop, listLoops } from '../stages/loop.js';
import { pidAlive } from '../exports/procs.js';
import { listMounts } from '../fuse/mounts.js';

export const SERVER_DIRS = ['smb', 'nfs', 'iscsi'] as const;

export interface RuntimeLayout {
  root: string;
  pidFile: string;
  socket: string;
  blocks: string;
  trees: string;
  server: (kind: (typeof SERVER_DIRS)[number]) => string;
}

export function runtimeLayout(root: string): RuntimeLayout {
  const r = resolve(root);
  return {
    root: r,
    pidFile: join(r, 'agent.pid'),
    socket: join(r, 'control.sock'),
    blocks: join(r, 'blocks'),
    trees: join(r, 'trees'),
    server: (kind) => join(r, kind),
  };
}

async function cmdline(pid: number): Promise<string | undefined> {
  try {
    return (await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').filter(Boolean).join(' ');
  } catch {
    return undefined;
  }
}

async function waitGone(pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!pidAlive(pid)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return !pidAlive(pid);
}

/** Refuses to start when another live agent owns the runtime directory; else claims it. */
export async function claimRuntime(layout: RuntimeLayout): Promise<void> {
  await fsp.mkdir(layout.root, { recursive: true, mode: 0o700 });
  await fsp.chmod(layout.root, 0o700);
  const text = await fsp.readFile(layout.pidFile, 'utf8').catch(() => '');
  const [pidLine, cmd] = text.split('\n');
  const pid = Number(pidLine);
  if (pid && pid !== process.pid && pidAlive(pid) && cmd && (await cmdline(pid)) === cmd) {
    throw new BridgeError('EBUSY', `another agent (pid ${pid}) is running with runtime directory ${layout.root}; stop it first (bridge-agent stop)`);
  }
  await fsp.writeFile(layout.pidFile, `${process.pid}\n${(await cmdline(process.pid)) ?? ''}\n`, { mode: 0o600 });
}

/** Clears what a killed agent left behind; returns what it did, for the log. */
export async function clearLeftovers(layout: RuntimeLayout, diskPaths: string[], log: Logger): Promise<string[]> {
  const done: string[] = [];
  const mounts = (await listMounts())
    .filter((m) => m.mountpoint.startsWith(layout.root + '/'))
    .sort((a, b) => Number(a.fstype.startsWith('fuse')) - Number(b.fstype.startsWith('fuse')) || b.mountpoint.length - a.mountpoint.length);
  // First abort the dead FUSE connections: processes blocked on them (smbd reading a file, the kernel
  // writing back an ext4 over a FUSE file) then fail at once instead of hanging us — even reading
  // their /proc/PID/cmdline can block while they wait on a dead FUSE page.
  for (const m of mounts.filter((x) => x.fstype.startsWith('fuse'))) {
    if (await abortFuseConnection(m.device)) done.push(`aborted dead FUSE connection ${m.device} at ${m.mountpoint}`);
  }
  // Loop devices are found now, while their backing paths still name our runtime directory (after the
  // FUSE unmount they read "/disk.img").
  const ours = new Set(diskPaths.map((p) => resolve(p)));
  const loops = (await listLoops()).filter((l) => l.backingFile.startsWith(layout.root + '/') || ours.has(l.backingFile));
  // server.pid of each server; nfs/rpcbind.pid of the rpcbind we started for NFSv3.
  const pidFiles = [...SERVER_DIRS.map((kind) => join(layout.server(kind), 'server.pid')), join(layout.server('nfs'), 'rpcbind.pid')];
  for (const pidFile of pidFiles) {
    const text = await fsp.readFile(pidFile, 'utf8').catch(() => '');
    const [pidLine, cmd] = text.split('\n');
    const pid = Number(pidLine);
    if (pid && cmd && (await cmdline(pid)) === cmd) {
      const control = /(?:^|\s)-C (\d+)/.exec(cmd)?.[1];
      if (cmd.startsWith('tgtd') && control) await stopStrayTgtd(Number(control));
      process.kill(pid, 'SIGTERM');
      if (!(await waitGone(pid, 5000))) {
        process.kill(pid, 'SIGKILL');
        await waitGone(pid, 2000);
      }
      done.push(`stopped stray ${cmd.split(' ')[0]} (pid ${pid})`);
    }
    await fsp.rm(pidFile, { force: true });
  }
  // Helpers of a stray server (samba-dcerpcd, rpcd_*) name our config files on their command lines.
  for (const kind of ['smb', 'nfs'] as const) {
    for (const pid of await killMatching(layout.server(kind) + '/')) done.push(`stopped stray process ${pid} using ${layout.server(kind)}`);
  }
  for (const m of mounts) {
    const ok = m.fstype.startsWith('fuse') ? await tryRun('fusermount', ['-uz', m.mountpoint]) : false;
    if (!ok) await tryRun('umount', ['-l', m.mountpoint]);
    done.push(`unmounted stale ${m.fstype} at ${m.mountpoint}`);
  }
  for (const l of loops) {
    await detachLoop(l.device).catch(() => undefined);
    done.push(`detached stale loop device ${l.device} (${l.backingFile})`);
  }
  for (const d of done) log.warn('cleared leftover of a previous agent', { what: d });
  return done;
}

const FUSECTL = '/sys/fs/fuse/connections';

/** Aborts a FUSE connection by its device number (mounting fusectl when needed); false when it cannot. */
async function abortFuseConnection(device: string): Promise<boolean> {
  const minor = device.split(':')[1];
  if (!minor) return false;
  const abort = join(FUSECTL, minor, 'abort');
  if (
    !(await fsp.stat(abort).then(
      () => true,
      () => false,
    ))
  )
    await tryRun('mount', ['-t', 'fusectl', 'fusectl', FUSECTL]);
  try {
    await fsp.writeFile(abort, '1');
    return true;
  } catch {
    return false;
  }
}
