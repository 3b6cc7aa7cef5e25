/**
 * `npm run bench -- fuse [SIZE_MIB]`: sequential 1 MiB reads and writes through the FUSE file of a
 * memory device, beside dd on tmpfs in the same run: libfuse2's and the kernel's defaults (what we
 * mount with), a deeper kernel queue, more read-ahead, and both, alternating. Source data is random (from tmpfs) so the
 * memory device cannot keep zeros as holes. Reads are cold (page cache dropped before each), with dd
 * bs=1M and with nbdcopy (several requests in flight).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryBlockDevice } from '../../appliance/src/block/memory.js';
import { BlockFile, DEEP_QUEUE, DEEP_READ_AHEAD_KB, LIBFUSE_DEFAULT_QUEUE } from '../../appliance/src/fuse/block-file.js';
import { configureLogger } from '../../shared/src/logger.js';
import { dropCaches, sh } from '../helpers/exec.js';

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

export async function run(args: string[]): Promise<void> {
  configureLogger({ level: 'warn' });
  const mib = Number(args[0] ?? 1024);
  const shm = mkdtempSync('/dev/shm/bridge-bench-');
  const work = mkdtempSync('/tmp/bridge-bench-');
  const src = join(shm, 'src.bin');
  const tmpfsTarget = join(shm, 'target.bin');
  const mnt = join(work, 'mnt');
  await sh('dd', ['if=/dev/urandom', `of=${src}`, 'bs=1M', `count=${mib}`, 'status=none']);
  const dd = (iff: string, of: string, extra: string[] = []): Promise<string> =>
    sh('dd', [`if=${iff}`, `of=${of}`, 'bs=1M', `count=${mib}`, ...extra, 'status=none']);
  const rows: [string, number, number][] = [];
  const variants: [string, { queueOptions?: string; readAheadKb?: number }][] = [
    [`defaults (${LIBFUSE_DEFAULT_QUEUE}, read-ahead 128 KiB)`, {}],
    [`deep queue (${DEEP_QUEUE})`, { queueOptions: DEEP_QUEUE }],
    [`read-ahead ${DEEP_READ_AHEAD_KB} KiB`, { readAheadKb: DEEP_READ_AHEAD_KB }],
    [`both`, { queueOptions: DEEP_QUEUE, readAheadKb: DEEP_READ_AHEAD_KB }],
  ];
  try {
    for (let round = 0; round < 2; round++) {
      for (const [name, tuning] of variants) {
        const file = await BlockFile.expose(new MemoryBlockDevice((mib + 16) * 1024 * 1024), mnt, tuning);
        try {
          const wFuse = await timed(() => dd(src, file.path, ['conv=notrunc,fsync']));
          const wTmpfs = await timed(() => dd(src, tmpfsTarget, ['conv=fsync']));
          await dropCaches();
          const rFuse = await timed(() => dd(file.path, '/dev/null'));
          await dropCaches();
          const rTmpfs = await timed(() => dd(tmpfsTarget, '/dev/null'));
          await dropCaches();
          const nFuse = await timed(() => sh('nbdcopy', [file.path, 'null:']));
          await dropCaches();
          const nTmpfs = await timed(() => sh('nbdcopy', [tmpfsTarget, 'null:']));
          rows.push(
            [`${round + 1} ${name}: write`, mib / wFuse, mib / wTmpfs],
            [`${round + 1} ${name}: read, dd`, mib / rFuse, mib / rTmpfs],
            [`${round + 1} ${name}: read, nbdcopy`, (mib * (1 + 16 / mib)) / nFuse, mib / nTmpfs],
          );
        } finally {
          await file.close();
        }
      }
    }
  } finally {
    rmSync(shm, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
  const mbps = (x: number): string => ((x * 1.048576) | 0).toString().padStart(8);
  const width = Math.max(...rows.map((r) => r[0].length)) + 2;
  process.stdout.write(`FUSE block file (memory device) vs tmpfs, ${mib} MiB, MB/s (reads cold)\n`);
  process.stdout.write(`${'case'.padEnd(width)}${'bridge'.padStart(8)}${'tmpfs'.padStart(8)}  ratio\n`);
  for (const [name, ours, peer] of rows) process.stdout.write(`${name.padEnd(width)}${mbps(ours)}${mbps(peer)}  ${(ours / peer).toFixed(2)}\n`);
  process.stdout.write('goals: read >= 1000 MB/s, write >= 500 MB/s\n');
}
