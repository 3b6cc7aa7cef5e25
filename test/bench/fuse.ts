/**
 * `npm run bench -- fuse [SIZE_MIB]`: sequential 1 MiB reads and writes through the FUSE file of a
 * memory device, beside dd on tmpfs in the same run. Source data is random (from tmpfs) so that the
 * memory device cannot keep zeros as holes. Reads are cold: page cache dropped before each.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startAgent, stopAgent } from '../helpers/agent.js';
import { dropCaches, sh } from '../helpers/exec.js';

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

export async function run(args: string[]): Promise<void> {
  const mib = Number(args[0] ?? 1024);
  const shm = mkdtempSync('/dev/shm/bridge-bench-');
  const work = mkdtempSync('/tmp/bridge-bench-');
  const src = join(shm, 'src.bin');
  const tmpfsTarget = join(shm, 'target.bin');
  const mnt = join(work, 'mnt');
  await sh('dd', ['if=/dev/urandom', `of=${src}`, 'bs=1M', `count=${mib}`, 'status=none']);
  const agent = await startAgent(['expose', '--device', `memory:${mib + 16}M`, mnt], /serving/);
  const disk = join(mnt, 'disk.img');
  const dd = (iff: string, of: string, extra: string[] = []): Promise<string> =>
    sh('dd', [`if=${iff}`, `of=${of}`, 'bs=1M', `count=${mib}`, ...extra, 'status=none']);
  const rows: [string, number, number][] = [];
  try {
    for (let round = 0; round < 2; round++) {
      const wFuse = await timed(() => dd(src, disk, ['conv=notrunc,fsync']));
      const wTmpfs = await timed(() => dd(src, tmpfsTarget, ['conv=fsync']));
      await dropCaches();
      const rFuse = await timed(() => dd(disk, '/dev/null'));
      await dropCaches();
      const rTmpfs = await timed(() => dd(tmpfsTarget, '/dev/null'));
      rows.push([`round ${round + 1} write`, mib / wFuse, mib / wTmpfs], [`round ${round + 1} read (cold)`, mib / rFuse, mib / rTmpfs]);
    }
  } finally {
    await stopAgent(agent);
    rmSync(shm, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
  const mbps = (x: number): string => ((x * 1.048576) | 0).toString().padStart(8);
  process.stdout.write(`FUSE block file (memory device) vs dd on tmpfs, ${mib} MiB, 1 MiB requests, MB/s\n`);
  process.stdout.write(`${'case'.padEnd(22)}${'bridge'.padStart(8)}${'tmpfs'.padStart(8)}  ratio\n`);
  for (const [name, ours, peer] of rows) process.stdout.write(`${name.padEnd(22)}${mbps(ours)}${mbps(peer)}  ${(ours / peer).toFixed(2)}\n`);
  process.stdout.write('goals: read >= 1000 MB/s, write >= 500 MB/s\n');
}
