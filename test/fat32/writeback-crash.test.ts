/**
 * Write-back through the built CLI and FUSE: kill -9 of the agent between a host write and its
 * flush (nothing applied, the source as it was), and after a flush (everything the flush acknowledged
 * is in the source); a restart serves the source as it then is. Zeroing the boot sector leaves the
 * source untouched and the agent serving. --read-only refuses writes with EROFS.
 *
 * The host writes are real: mtools changes a private copy of the disk (a new file, a deleted one,
 * a rename), and the sectors that differ are written to MNT/disk.img through one descriptor.
 */
import { cpSync, mkdtempSync, promises as fsp, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '../helpers/random.js';
import { mtools } from './helpers.js';
import { serve, stop, treeDiff, type Served } from './writeback-cli.js';

const MIB = 1024 * 1024;

/** Copies the served disk to `copy` (sparse), returns nothing. */
async function copyDisk(from: string, copy: string): Promise<void> {
  const src = await fsp.open(from, 'r');
  const dst = await fsp.open(copy, 'w');
  try {
    const buf = Buffer.alloc(4 * MIB);
    const size = (await src.stat()).size;
    await dst.truncate(size);
    for (let pos = 0; pos < size; pos += buf.length) {
      const { bytesRead } = await src.read(buf, 0, buf.length, pos);
      if (buf.subarray(0, bytesRead).some((b) => b !== 0)) await dst.write(buf, 0, bytesRead, pos);
    }
  } finally {
    await src.close();
    await dst.close();
  }
}

/** Where the FATs lie on the disk: from the boot sector's reserved sectors, FAT count and FAT size. */
async function fatRange(disk: string): Promise<[number, number]> {
  const fh = await fsp.open(disk, 'r');
  const boot = Buffer.alloc(512);
  await fh.read(boot, 0, 512, MIB);
  await fh.close();
  const start = MIB + boot.readUInt16LE(14) * 512;
  return [start, start + boot[16]! * boot.readUInt32LE(36) * 512];
}

/** The 512-byte sectors where two images differ: [offset, bytes][]. */
async function changedSectors(a: string, b: string): Promise<[number, Buffer][]> {
  const [fa, fb] = [await fsp.readFile(a), await fsp.readFile(b)];
  const out: [number, Buffer][] = [];
  for (let off = 0; off < fa.length; off += 512) {
    if (!fa.subarray(off, off + 512).equals(fb.subarray(off, off + 512))) out.push([off, Buffer.from(fb.subarray(off, off + 512))]);
  }
  return out;
}

describe('FAT32 write-back: crashes and the boot sector (CLI, FUSE)', () => {
  let dir = '';
  let src = '';
  let mnt = '';
  let served: Served | undefined;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-crash-'));
    src = join(dir, 'src');
    mnt = join(dir, 'mnt');
    await fsp.mkdir(join(src, 'Docs'), { recursive: true });
    const rng = new Rng(9);
    await fsp.writeFile(join(src, 'Keep Me.txt'), rng.bytes(3000));
    await fsp.writeFile(join(src, 'Delete Me.bin'), rng.bytes(7000));
    await fsp.writeFile(join(src, 'Docs', 'Rename Me.txt'), rng.bytes(100));
    await fsp.writeFile(join(dir, 'new.bin'), rng.bytes(50_000));
  });

  afterAll(async () => {
    await stop(served, mnt, true);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** The host's change, made by mtools on a copy of the served disk: returns the sectors it wrote and the expected tree. */
  async function hostChange(tag: string, del = 'Delete Me.bin', renamed = 'Docs/Rename Me.txt'): Promise<{ sectors: [number, Buffer][]; expected: string }> {
    const before = join(dir, `${tag}-before.img`);
    const after = join(dir, `${tag}-after.img`);
    await copyDisk(join(mnt, 'disk.img'), before);
    await fsp.copyFile(before, after);
    const img = `${after}@@1M`;
    for (const [cmd, args] of [
      ['mcopy', [join(dir, 'new.bin'), `::/Docs/Brand New ${tag}.bin`]],
      ['mdel', [`::/${del}`]],
      ['mren', [`::/${renamed}`, `::/Docs/Renamed ${tag}.txt`]],
    ] as const) {
      const r = await mtools(cmd, ['-i', img, ...args]);
      if (r.code !== 0) throw new Error(`${cmd}: ${r.stderr}`);
    }
    const expected = join(dir, `${tag}-expected`);
    cpSync(src, expected, { recursive: true });
    await fsp.copyFile(join(dir, 'new.bin'), join(expected, 'Docs', `Brand New ${tag}.bin`));
    await fsp.unlink(join(expected, del));
    await fsp.rename(join(expected, renamed), join(expected, 'Docs', `Renamed ${tag}.txt`));
    const sectors = await changedSectors(before, after);
    await fsp.rm(before);
    await fsp.rm(after);
    return { sectors, expected };
  }

  it('kill -9 between a host write and its flush: the source is as it was', { timeout: 120_000 }, async () => {
    served = await serve(src, mnt);
    const original = join(dir, 'original');
    cpSync(src, original, { recursive: true });
    const { sectors } = await hostChange('one');
    const fh = await fsp.open(join(mnt, 'disk.img'), 'r+');
    for (const [off, data] of sectors) await fh.write(data, 0, data.length, off);
    // The agent dies before any flush (the descriptor is still open: close would flush).
    await stop(served, mnt, true);
    await fh.close().catch(() => undefined);
    expect(await treeDiff(src, original)).toEqual([]);
    // A restart serves the source as it is.
    served = await serve(src, mnt);
    expect(await treeDiff(src, original)).toEqual([]);
    const r = await mtools('mdir', ['-b', '-i', `${mnt}/disk.img@@1M`, '::/Docs']);
    expect(r.stdout).toContain('Rename Me.txt');
  });

  it('kill -9 after a flush: everything the flush acknowledged is in the source', { timeout: 120_000 }, async () => {
    const { sectors, expected } = await hostChange('two');
    const fh = await fsp.open(join(mnt, 'disk.img'), 'r+');
    for (const [off, data] of sectors) await fh.write(data, 0, data.length, off);
    await fh.sync(); // SYNCHRONIZE CACHE: the write-back applies before this returns
    await stop(served, mnt, true);
    await fh.close().catch(() => undefined);
    expect(await treeDiff(src, expected)).toEqual([]);
    served = await serve(src, mnt);
    expect(await treeDiff(src, expected)).toEqual([]);
    const r = await mtools('mtype', ['-i', `${mnt}/disk.img@@1M`, '::/Docs/Brand New two.bin']);
    expect(r.code).toBe(0);
  });

  it('kill -9 after a flush that found the volume half-written: a restart restores the host view, then applies it', { timeout: 120_000 }, async () => {
    const { sectors, expected } = await hostChange('three', 'Keep Me.txt', 'Docs/Renamed two.txt');
    const before = join(dir, 'before-three');
    cpSync(src, before, { recursive: true });
    // The host writes everything but the FAT first: its new file's chain is still free, so the
    // flush it makes finds the volume inconsistent and holds it (nothing applied, all acknowledged).
    const [fatStart, fatEnd] = await fatRange(join(mnt, 'disk.img'));
    const isFat = ([off]: [number, Buffer]): boolean => off >= fatStart && off < fatEnd;
    const fh = await fsp.open(join(mnt, 'disk.img'), 'r+');
    for (const [off, data] of sectors.filter((x) => !isFat(x))) await fh.write(data, 0, data.length, off);
    await fh.sync();
    await stop(served, mnt, true);
    await fh.close().catch(() => undefined);
    expect(await treeDiff(src, before)).toEqual([]);
    expect(served!.stderr()).toMatch(/host changes held/);
    // Restarted: the session resumes, and the host sees exactly what it wrote.
    served = await serve(src, mnt);
    const ready = served.ready as unknown as { report: { writeBack: { resumedFrom?: string; held?: string[] } } };
    expect(ready.report.writeBack.resumedFrom).toMatch(/session\.json$/);
    expect(ready.report.writeBack.held?.join('\n')).toMatch(/Brand New three\.bin: chain ends in a free cluster/);
    const rh = await fsp.open(join(mnt, 'disk.img'), 'r');
    for (const [off, data] of sectors.filter((x) => !isFat(x))) {
      const b = Buffer.alloc(data.length);
      await rh.read(b, 0, b.length, off);
      expect(b.equals(data), `sector at ${off} reads back as the host wrote it`).toBe(true);
    }
    await rh.close();
    // The host finishes (the FAT): applied at its flush.
    const fh2 = await fsp.open(join(mnt, 'disk.img'), 'r+');
    for (const [off, data] of sectors.filter(isFat)) await fh2.write(data, 0, data.length, off);
    await fh2.sync();
    await fh2.close();
    expect(await treeDiff(src, expected)).toEqual([]);
    expect(served.stderr()).toMatch(/write-back resumed: the volume is consistent again/);
  });

  it('zeroing the boot sector leaves the source untouched and the agent serving', { timeout: 60_000 }, async () => {
    const snapshot = join(dir, 'before-zero');
    cpSync(src, snapshot, { recursive: true });
    const fh = await fsp.open(join(mnt, 'disk.img'), 'r+');
    await fh.write(Buffer.alloc(512), 0, 512, MIB);
    await fh.sync();
    await fh.close();
    expect(await treeDiff(src, snapshot)).toEqual([]);
    expect(served!.child.exitCode).toBeNull();
    const boot = Buffer.alloc(512, 1);
    const mbr = Buffer.alloc(512);
    const rh = await fsp.open(join(mnt, 'disk.img'), 'r');
    await rh.read(boot, 0, 512, MIB);
    await rh.read(mbr, 0, 512, 0);
    await rh.close();
    expect(boot.every((b) => b === 0)).toBe(true); // reads return what the host wrote
    expect(mbr.readUInt16LE(510)).toBe(0xaa55); // and the MBR is still ours
    expect(served!.stderr()).toMatch(/write-back suspended/);
    // kill -9 and restart: the host's zeroed boot sector is still what it reads, the source still untouched.
    await stop(served, mnt, true);
    served = await serve(src, mnt);
    const again = Buffer.alloc(512, 1);
    const rh2 = await fsp.open(join(mnt, 'disk.img'), 'r');
    await rh2.read(again, 0, 512, MIB);
    await rh2.close();
    expect(again.every((b) => b === 0)).toBe(true);
    expect(served.stderr()).toMatch(/write-back session resumed/);
    expect(await treeDiff(src, snapshot)).toEqual([]);
    await stop(served, mnt);
    served = undefined;
  });

  it('--read-only refuses writes (EROFS)', { timeout: 60_000 }, async () => {
    await stop(served, mnt); // when the test before failed half-way
    served = await serve(src, mnt, ['--read-only']);
    expect(served.ready.writable).toBe(false);
    await expect(fsp.open(join(mnt, 'disk.img'), 'r+')).rejects.toMatchObject({ code: 'EROFS' });
    await stop(served, mnt);
    served = undefined;
  });
});
