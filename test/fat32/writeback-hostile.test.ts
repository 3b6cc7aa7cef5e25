/**
 * Write-back against hostile and odd host writes, in process (no FUSE): a rewritten boot sector or
 * MBR suspends the write-back; names that would escape the source (`..`, `/`, NUL), looping and
 * cross-linked chains and garbage entries apply nothing; the source is never damaged and the volume
 * keeps serving what the host wrote. Plus the positive controls (a deletion, a changed dirty bit),
 * a change made to the source by someone else (a conflict, not clobbered), the journal's recovery of
 * a plan a crash interrupted, and --read-only's EROFS.
 */
import { existsSync, mkdtempSync, promises as fsp, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { logger } from '../../shared/src/logger.js';
import { applyOp, type Op } from '../../appliance/src/fat32/apply.js';
import { buildFat32Volume, type Fat32Volume } from '../../appliance/src/fat32/index.js';
import { Journal } from '../../appliance/src/fat32/journal.js';
import { clusterOffset } from '../../appliance/src/fat32/layout.js';
import { writeLfnEntries, writeShortEntry } from '../../appliance/src/fat32/dirent.js';
import { Rng } from '../helpers/random.js';
import { sourceTree } from './writeback-cli.js';

const MIB = 1024 * 1024;

describe('FAT32 write-back: hostile writes', () => {
  let dir = '';
  let src = '';
  let vol: Fat32Volume | undefined;
  let before: Map<string, Buffer | 'dir'>;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-hostile-'));
    src = join(dir, 'src');
    await fsp.mkdir(join(src, 'Sub'), { recursive: true });
    await fsp.writeFile(join(src, 'hello.txt'), 'hello world\n');
    await fsp.writeFile(join(src, 'Data File.bin'), new Rng(5).bytes(5000));
    await fsp.writeFile(join(src, 'Sub', 'Inner File.txt'), 'inner\n');
    before = await sourceTree(src);
    vol = await buildFat32Volume(src, { size: 256 * MIB, writeBack: true });
  });

  afterEach(async () => {
    await vol?.close();
    vol = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  const entry = (name: string, parent = 0): number => {
    const i = vol!.snapshot.entries.find(parent, name);
    if (i < 0) throw new Error(`no entry ${name}`);
    return i;
  };
  const read = async (offset: number, length: number): Promise<Buffer> => {
    const b = Buffer.alloc(length);
    await vol!.read(b, offset);
    return b;
  };
  /** Writes the 13 UTF-16 units of a one-slot long name entry (checksum kept, so the name is believed). */
  const setLfnName = async (name: string, units: number[]): Promise<void> => {
    const at = vol!.directoryEntryOffset(entry(name)) - 32;
    const e = await read(at, 32);
    [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30].forEach((off, i) => e.writeUInt16LE(units[i] ?? (i === units.length ? 0 : 0xffff), off));
    await vol!.write(e, at);
  };
  const fatEntryOffset = (cluster: number): number => vol!.geometry.fatOffset + cluster * 4;
  const setFat = async (cluster: number, value: number): Promise<void> => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(value);
    await vol!.write(b, fatEntryOffset(cluster));
    await vol!.write(b, fatEntryOffset(cluster) + vol!.geometry.fatSectors * 512);
  };
  const expectSourceUntouched = async (): Promise<void> => {
    expect(await sourceTree(src)).toEqual(before);
    expect((await fsp.readdir(dir)).sort()).toEqual(['src']);
  };

  it('deletes a file whose entries the host marked deleted and whose chain it freed (positive control)', async () => {
    const i = entry('hello.txt');
    const at = vol!.directoryEntryOffset(i);
    await vol!.write(Buffer.from([0xe5]), at - 32);
    await vol!.write(Buffer.from([0xe5]), at);
    await setFat(vol!.snapshot.entries.firstCluster[i]!, 0);
    await vol!.flush();
    const after = await sourceTree(src);
    expect([...after.keys()].sort()).toEqual([...before.keys()].filter((k) => k !== 'hello.txt').sort());
    expect(vol!.report().writeBack?.applied.deleted).toBe(1);
  });

  it('keeps aside an entry that left every directory while its chain stays allocated, until it reappears or is freed', async () => {
    const g = vol!.geometry;
    const t = vol!.snapshot.entries;
    const i = entry('Data File.bin');
    const first = t.firstCluster[i]!;
    const original = before.get('Data File.bin') as Buffer;
    // A move written in two steps (as Linux vfat may): first the old entry goes...
    const at = vol!.directoryEntryOffset(i);
    await vol!.write(Buffer.from([0xe5]), at - 32);
    await vol!.write(Buffer.from([0xe5]), at);
    await vol!.flush();
    expect((await sourceTree(src)).has('Data File.bin')).toBe(false);
    const parked = join(src, '.bridge-fat32', `orphan-${first}`);
    expect(await fsp.readFile(parked)).toEqual(original);
    expect(vol!.report().writeBack?.applied.deleted).toBe(0);
    // ...then the new one, in another directory, with the same first cluster.
    const sub = entry('Sub');
    const slot = Buffer.alloc(3 * 32);
    const off = writeLfnEntries(slot, 0, 'Moved File.bin', 'MOVEDF~1BIN');
    writeShortEntry(slot, off, {
      name: 'MOVEDF~1BIN',
      attr: 0x20,
      firstCluster: first,
      size: original.length,
      mtimeMs: Date.now(),
      atimeMs: Date.now(),
      birthtimeMs: Date.now(),
    });
    await vol!.write(slot, clusterOffset(g, t.firstCluster[sub]!) + t.dirSlots[sub]! * 32);
    await vol!.flush();
    expect(await fsp.readFile(join(src, 'Sub', 'Moved File.bin'))).toEqual(original);
    expect(existsSync(parked)).toBe(false);
    expect(await read(clusterOffset(g, first), original.length)).toEqual(original);
    // Deleted for real (entry and chain): gone.
    const movedAt = clusterOffset(g, t.firstCluster[sub]!) + t.dirSlots[sub]! * 32;
    await vol!.write(Buffer.from([0xe5]), movedAt);
    await vol!.write(Buffer.from([0xe5]), movedAt + 32);
    await vol!.write(Buffer.from([0xe5]), movedAt + off);
    for (let c = first; c < first + 3; c++) await setFat(c, 0);
    await vol!.flush();
    expect([...(await sourceTree(src)).keys()].sort()).toEqual(['Sub', 'Sub/Inner File.txt', 'hello.txt']);
    expect(vol!.report().writeBack?.applied.deleted).toBe(1);
  });

  it('writes data the host wrote into a file cluster at the right offset, and extends it', async () => {
    const g = vol!.geometry;
    const i = entry('Data File.bin'); // 5000 bytes: clusters first, first+1, first+2 (2 KiB each)
    const first = vol!.snapshot.entries.firstCluster[i]!;
    const patch = new Rng(6).bytes(2048);
    await vol!.write(patch, clusterOffset(g, first + 1));
    await vol!.flush();
    const expected = Buffer.from(before.get('Data File.bin') as Buffer);
    patch.copy(expected, 2048);
    expect(await fsp.readFile(join(src, 'Data File.bin'))).toEqual(expected);
    // Extend by one cluster: chain first+2 → a free cluster, size 5000 → 7000, data in the new cluster.
    const free = vol!.clusters.firstFree(g.clusterCount);
    await setFat(first + 2, free);
    await setFat(free, 0x0fffffff);
    const tail = new Rng(7).bytes(2048);
    await vol!.write(tail, clusterOffset(g, free));
    const at = vol!.directoryEntryOffset(i);
    const short = await read(at, 32);
    short.writeUInt32LE(7000, 28);
    await vol!.write(short, at);
    await vol!.flush();
    const grown = Buffer.concat([expected, Buffer.alloc(1144), tail]).subarray(0, 7000);
    // Bytes 5000-6143 of the old last cluster read as zeros on the volume (past the old end).
    expect(await fsp.readFile(join(src, 'Data File.bin'))).toEqual(grown);
    // And the volume reads the file back as the source holds it.
    expect(await read(clusterOffset(g, first), 6144)).toEqual(grown.subarray(0, 6144));
    expect(vol!.report().writeBack?.conflicts).toEqual([]);
  });

  it('keeps an entry whose chain is not written yet pending, and applies it once consistent', async () => {
    const g = vol!.geometry;
    const t = vol!.snapshot.entries;
    const free = vol!.clusters.firstFree(g.clusterCount);
    const slot = Buffer.alloc(3 * 32);
    const name = 'Pending File.txt';
    const at = writeLfnEntries(slot, 0, name, 'PENDIN~1TXT');
    writeShortEntry(slot, at, {
      name: 'PENDIN~1TXT',
      attr: 0x20,
      firstCluster: free,
      size: 3000,
      mtimeMs: Date.now(),
      atimeMs: Date.now(),
      birthtimeMs: Date.now(),
    });
    // The directory entry first, as a host may write it: its chain is still free in the FAT.
    await vol!.write(slot, clusterOffset(g, 2) + t.dirSlots[0]! * 32);
    await vol!.flush();
    expect(vol!.report().writeBack?.held?.join('\n')).toMatch(/Pending File.txt: chain ends in a free cluster/);
    await expectSourceUntouched();
    // Then the data and the FAT: consistent, applied at the next flush.
    const data = new Rng(8).bytes(3000);
    await vol!.write(Buffer.concat([data, Buffer.alloc(4096 - 3000)]), clusterOffset(g, free));
    await setFat(free, free + 1);
    await setFat(free + 1, 0x0fffffff);
    await vol!.flush();
    expect(vol!.report().writeBack?.held).toBeUndefined();
    expect(await fsp.readFile(join(src, name))).toEqual(data);
  });

  it('suspends write-back when the boot sector is zeroed, and keeps serving', async () => {
    const g = vol!.geometry;
    await vol!.write(Buffer.alloc(512), g.partitionOffset);
    await vol!.flush();
    expect(vol!.report().writeBack?.suspended).toMatch(/boot sector/);
    expect(await read(g.partitionOffset, 512)).toEqual(Buffer.alloc(512)); // what the host wrote
    // Still serving file data, and later writes (a deletion) stay in the overlay only.
    const data = entry('Data File.bin');
    const got = await read(clusterOffset(g, vol!.snapshot.entries.firstCluster[data]!), 5000);
    expect(got).toEqual(before.get('Data File.bin'));
    await vol!.write(Buffer.from([0xe5]), vol!.directoryEntryOffset(entry('hello.txt')));
    await vol!.flush();
    await expectSourceUntouched();
  });

  it('suspends write-back on a cluster-size change and on a rewritten MBR', async () => {
    const g = vol!.geometry;
    const boot = await read(g.partitionOffset, 512);
    boot[13] = boot[13]! * 2;
    await vol!.write(boot, g.partitionOffset);
    await vol!.flush();
    expect(vol!.report().writeBack?.suspended).toMatch(/boot sector/);
    await vol!.close();
    // Served again: the session resumes (the host's sectors are never silently dropped), still suspended.
    vol = await buildFat32Volume(src, { size: 256 * MIB, writeBack: true });
    expect(vol.report().writeBack?.resumedFrom).toMatch(/session\.json$/);
    expect(vol.report().writeBack?.suspended).toMatch(/boot sector/);
    expect(await read(g.partitionOffset, 512)).toEqual(boot);
    await vol.close();
    // Moving the journal directory away discards the session: a fresh volume from the source.
    await fsp.rm(join(src, '.bridge-fat32'), { recursive: true });
    vol = await buildFat32Volume(src, { size: 256 * MIB, writeBack: true });
    expect(vol.report().writeBack?.resumedFrom).toBeUndefined();
    await vol.write(Buffer.alloc(64), 446);
    await vol.flush();
    expect(vol.report().writeBack?.suspended).toMatch(/MBR/);
    await expectSourceUntouched();
  });

  it('holds names that would escape the source (.., /, NUL) and resumes once they are gone', async () => {
    const original = await read(vol!.directoryEntryOffset(entry('hello.txt')) - 32, 32);
    for (const units of [
      [0x2e, 0x2e],
      [0x2e, 0x2e, 0x2f, 0x78],
      [0x61, 0x2f, 0x62],
    ]) {
      await setLfnName('hello.txt', units);
      await vol!.flush();
      expect(vol!.report().writeBack?.held?.join('\n')).toMatch(/name/);
      await expectSourceUntouched();
    }
    // NUL: a short name with a NUL byte and no valid long name (its checksum no longer matches).
    const at = vol!.directoryEntryOffset(entry('hello.txt'));
    await vol!.write(Buffer.from('A\0B     TXT', 'latin1'), at);
    await vol!.flush();
    expect(vol!.report().writeBack?.held?.join('\n')).toMatch(/NUL/);
    await expectSourceUntouched();
    // Put the entries back: consistent again, nothing to apply, not held.
    await vol!.write(original, at - 32);
    await vol!.write(Buffer.from(vol!.snapshot.entries.shortName[entry('hello.txt')]!, 'latin1'), at);
    await vol!.flush();
    expect(vol!.report().writeBack?.held).toBeUndefined();
    await expectSourceUntouched();
  });

  it('holds looping and cross-linked chains', async () => {
    const t = vol!.snapshot.entries;
    const data = t.firstCluster[entry('Data File.bin')]!; // 5000 bytes: 3 clusters of 2 KiB
    const hello = t.firstCluster[entry('hello.txt')]!;
    await setFat(data + 2, data); // last cluster points back at the first
    // A deletion at the same time must not be applied either.
    await vol!.write(Buffer.from([0xe5]), vol!.directoryEntryOffset(entry('Inner File.txt', entry('Sub'))));
    await vol!.flush();
    expect(vol!.report().writeBack?.held?.join('\n')).toMatch(/loops or is cross-linked/);
    await expectSourceUntouched();
    await setFat(data + 2, hello); // now the chain runs into hello.txt's cluster
    await vol!.flush();
    expect(vol!.report().writeBack?.held?.join('\n')).toMatch(/loops or is cross-linked/);
    await expectSourceUntouched();
  });

  it('never damages the source with garbage directory entries', async () => {
    const rng = new Rng(77);
    const t = vol!.snapshot.entries;
    const rootEnd = clusterOffset(vol!.geometry, 2) + t.dirSlots[0]! * 32;
    for (let round = 0; round < 20; round++) {
      const garbage = rng.bytes(32 * 4);
      for (let k = 0; k < 4; k++) if (garbage[k * 32] === 0 || garbage[k * 32] === 0xe5) garbage[k * 32] = 0x41;
      await vol!.write(garbage, rootEnd);
      await vol!.flush();
      // Whatever the garbage decodes to, the original files are intact and nothing left the source.
      const now = await sourceTree(src);
      for (const [p, v] of before) expect(now.get(p), p).toEqual(v);
      expect((await fsp.readdir(dir)).sort()).toEqual(['src']);
    }
  });

  it('applies an ordinary change while the host sets and clears the dirty bit', async () => {
    await setFat(1, 0x07ffffff); // "volume dirty" (clean-shutdown bit cleared)
    const at = vol!.directoryEntryOffset(entry('hello.txt'));
    await vol!.write(Buffer.from([0xe5]), at - 32);
    await vol!.write(Buffer.from([0xe5]), at);
    await vol!.flush();
    await setFat(1, 0x0fffffff);
    await vol!.flush();
    expect((await sourceTree(src)).has('hello.txt')).toBe(false);
    expect(vol!.report().writeBack?.held).toBeUndefined();
  });

  it('reports, and does not clobber, a file changed in the source while the host changed it too', async () => {
    const i = entry('Data File.bin');
    await fsp.appendFile(join(src, 'Data File.bin'), 'changed by someone else');
    const external = await fsp.readFile(join(src, 'Data File.bin'));
    await vol!.write(Buffer.alloc(2048, 7), clusterOffset(vol!.geometry, vol!.snapshot.entries.firstCluster[i]!));
    await vol!.flush();
    expect(await fsp.readFile(join(src, 'Data File.bin'))).toEqual(external);
    expect(vol!.report().writeBack?.conflicts.map((c) => c.path)).toEqual(['Data File.bin']);
  });

  it('refuses writes on a read-only volume (EROFS)', async () => {
    const ro = await buildFat32Volume(src, { size: 256 * MIB });
    try {
      expect(ro.capabilities.writable).toBe(false);
      await expect(ro.write(Buffer.alloc(512), 0)).rejects.toMatchObject({ code: 'EROFS' });
    } finally {
      await ro.close();
    }
  });
});

describe('FAT32 write-back journal', () => {
  it('completes a plan a crash interrupted, from its recorded progress, idempotently', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-journal-'));
    try {
      const src = join(dir, 'src');
      await fsp.mkdir(src);
      await fsp.writeFile(join(src, 'a'), 'aaaa');
      await fsp.writeFile(join(src, 'c'), 'cccc');
      const journal = new Journal(join(src, '.bridge-fat32'), src, logger());
      await journal.begin();
      await fsp.writeFile(journal.staged('new-0'), 'new file');
      await fsp.writeFile(journal.blobPath, 'XY');
      const ops: Op[] = [
        { op: 'unlink', path: join(src, 'a') },
        { op: 'rename', from: journal.staged('new-0'), to: join(src, 'b') },
        { op: 'mkdir', path: join(src, 'd') },
        { op: 'rename', from: join(src, 'c'), to: join(src, 'd', 'c') },
        { op: 'write', path: join(src, 'd', 'c'), offset: 1, blobOffset: 0, length: 2 },
        { op: 'truncate', path: join(src, 'd', 'c'), size: 3 },
      ];
      await journal.commit(ops);
      // The crash: ops 0 and 1 ran, only op 0 was recorded.
      const ctx = { sourceRoot: src, journalDir: journal.dir, blob: journal.blobPath, notes: [], touched: new Set<string>() };
      await applyOp(ops[0]!, ctx);
      await applyOp(ops[1]!, ctx);
      await fsp.writeFile(join(journal.dir, 'progress'), '0\n');
      const replayed = await new Journal(join(src, '.bridge-fat32'), src, logger()).recover();
      expect(replayed).toBe(5);
      expect(await sourceTree(src)).toEqual(
        new Map<string, Buffer | 'dir'>([
          ['b', Buffer.from('new file')],
          ['d', 'dir'],
          ['d/c', Buffer.from('cXY')],
        ]),
      );
      // An operation outside the source is refused even from a journal.
      await expect(applyOp({ op: 'unlink', path: join(dir, 'outside') }, ctx)).rejects.toMatchObject({ code: 'EACCES' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
