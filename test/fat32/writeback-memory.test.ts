/**
 * Write-back memory is bounded by metadata, not by what the host writes: a 1 GiB file copied in
 * with mtools through the FUSE file of the built CLI (`--size 2G`) goes to the on-disk overlay,
 * is applied at the close's flush, and its overlay sectors are then dropped (the overlay files are
 * deleted: disk space comes back). The serving process's peak RSS (VmHWM) must stay far below the
 * bytes written; the figure is printed. BRIDGE_WB_MEMORY_MIB=N writes another size.
 */
import { createReadStream, mkdtempSync, openSync, closeSync, writeSync, promises as fsp, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '../helpers/random.js';
import { mtools } from './helpers.js';
import { serve, stop, type Served } from './writeback-cli.js';

const MIB = 1024 * 1024;
const SIZE_MIB = Number(process.env.BRIDGE_WB_MEMORY_MIB ?? 1024);
/** The bound: well under the bytes written; the CLI alone takes ~100-150 MiB. */
const RSS_BOUND_MIB = 200;

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function peakRssMiB(pid: number): Promise<number> {
  const status = await fsp.readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
}

async function du(path: string): Promise<number> {
  let total = 0;
  const walk = async (p: string): Promise<void> => {
    const st = await fsp.lstat(p).catch(() => undefined);
    if (!st) return;
    total += st.blocks * 512;
    if (st.isDirectory()) for (const n of await fsp.readdir(p)) await walk(join(p, n));
  };
  await walk(path);
  return total;
}

describe('FAT32 write-back: memory stays bounded while the host writes far more', () => {
  let dir = '';
  let src = '';
  let mnt = '';
  let big = '';
  let served: Served | undefined;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-memory-'));
    src = join(dir, 'src');
    mnt = join(dir, 'mnt');
    await fsp.mkdir(src);
    await fsp.writeFile(join(src, 'existing.txt'), 'already here\n');
    // Each MiB differs (a seeded block with the MiB's number in front), so misplaced data shows.
    big = join(dir, 'big.bin');
    const block = new Rng(11).bytes(MIB);
    const fd = openSync(big, 'w');
    for (let i = 0; i < SIZE_MIB; i++) {
      block.writeUInt32LE(i, 0);
      writeSync(fd, block);
    }
    closeSync(fd);
  }, 120_000);

  afterAll(async () => {
    await stop(served, mnt, true);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it(`copies ${SIZE_MIB} MiB in with peak RSS under ${RSS_BOUND_MIB} MiB, and gives the overlay's disk space back`, { timeout: 600_000 }, async () => {
    served = await serve(src, mnt, ['--size', '2G']);
    const before = await peakRssMiB(served.child.pid!);
    const r = await mtools('mcopy', ['-i', `${mnt}/disk.img@@1M`, big, '::/Big File.bin']);
    expect(r.code, r.stderr).toBe(0);
    // mcopy's close flushed: the file is in the source, identical.
    expect(await sha256(join(src, 'Big File.bin'))).toBe(await sha256(big));
    const peak = await peakRssMiB(served.child.pid!);
    const journal = await du(join(src, '.bridge-fat32'));
    console.log(
      `write-back memory: ${SIZE_MIB} MiB written through FUSE; serving process peak RSS ${peak.toFixed(0)} MiB (${before.toFixed(0)} MiB when ready); journal directory afterwards ${(journal / MIB).toFixed(1)} MiB`,
    );
    expect(peak).toBeLessThan(RSS_BOUND_MIB);
    expect(journal).toBeLessThan(16 * MIB); // only metadata sectors stay in the overlay
    // The host reads its file back from the source now (its overlay sectors were dropped).
    const back = join(dir, 'back.bin');
    const rb = await mtools('mcopy', ['-i', `${mnt}/disk.img@@1M`, '::/Big File.bin', back]);
    expect(rb.code, rb.stderr).toBe(0);
    expect(await sha256(back)).toBe(await sha256(big));
    expect(served.stderr()).not.toMatch(/held|suspended|failed/);
  });
});
