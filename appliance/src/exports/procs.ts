/** Finding and stopping processes by their command line (helpers smbd spawns, strays of a killed agent). */
import { promises as fsp } from 'node:fs';

/** Pids (not ours) whose command line contains `needle`. */
export async function pidsMatching(needle: string): Promise<number[]> {
  const out: number[] = [];
  for (const name of await fsp.readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    const cmd = await fsp.readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    if (cmd.replace(/\0/g, ' ').includes(needle)) out.push(Number(name));
  }
  return out;
}

/** Whether a process with this pid exists (signal 0 probes without sending). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL after `graceMs`, every process whose command line contains `needle`; returns their pids. */
export async function killMatching(needle: string, graceMs = 3000): Promise<number[]> {
  const pids = await pidsMatching(needle);
  for (const p of pids) {
    try {
      process.kill(p, 'SIGTERM');
    } catch {
      /* gone already */
    }
  }
  const end = Date.now() + graceMs;
  while (pids.some(pidAlive) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  for (const p of pids.filter(pidAlive)) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone already */
    }
  }
  return pids;
}
