/**
 * The metadata model the write path will diff against: every entry's short directory entry is where
 * directoryEntryOffset says, names its first cluster and size, and every data cluster maps back to
 * its owner and offset.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { buildFat32Volume } from '../../appliance/src/fat32/index.js';
import { ClusterMap, FAT_EOC } from '../../appliance/src/fat32/clusters.js';
import { Rng } from '../helpers/random.js';

it('locates every directory entry and maps every cluster back to its owner', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-model-'));
  try {
    const rng = new Rng(11);
    for (let d = 0; d < 3; d++) {
      mkdirSync(join(dir, `sub ${d}`));
      // 200 long names: the directory spans several 512-byte clusters.
      for (let f = 0; f < 200; f++) writeFileSync(join(dir, `sub ${d}`, `a rather long file name ${f}.data`), rng.bytes(rng.int(0, 1500)));
    }
    const vol = await buildFat32Volume(dir, { size: 40 * 1024 * 1024 });
    try {
      const { entries } = vol.snapshot;
      const cs = vol.geometry.clusterSize;
      expect(cs).toBe(512);
      const fat = Buffer.alloc(vol.geometry.fatSectors * 512);
      await vol.read(fat, vol.geometry.fatOffset);
      expect(entries.count).toBe(1 + 3 + 600);
      for (let i = 1; i < entries.count; i++) {
        const e = entries.view(i);
        const raw = Buffer.alloc(32);
        await vol.read(raw, vol.directoryEntryOffset(i));
        expect(raw.toString('latin1', 0, 11)).toBe(e.shortName);
        expect((raw.readUInt16LE(20) << 16) | raw.readUInt16LE(26)).toBe(e.firstCluster);
        expect(raw.readUInt32LE(28)).toBe(e.size);
        // The chain in the FAT has the entry's length and every cluster maps back to the entry.
        let n = 0;
        for (let c = e.firstCluster; c !== 0 && c < FAT_EOC - 7; c = fat.readUInt32LE(c * 4)) {
          expect(vol.clusters.lookup(c, cs)).toEqual({ entry: i, offset: n * cs });
          n++;
        }
        expect(n).toBe(e.clusters);
      }
    } finally {
      await vol.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

it('generates the same FAT bytes for aligned and unaligned reads of fragmented chains', () => {
  const rng = new Rng(3);
  // Runs of several owners with gaps, chained across runs (as the write path may make them).
  const runs: { start: number; length: number; next: number; owner: number; base: number }[] = [];
  let c = 2;
  for (let i = 0; i < 300; i++) {
    c += rng.int(0, 3);
    const length = rng.int(1, 40);
    runs.push({ start: c, length, next: rng.int(0, 1) ? FAT_EOC : c + length + 7, owner: i, base: 0 });
    c += length;
  }
  const map = ClusterMap.fromRuns(runs);
  const bytes = (c + 16) * 4;
  // Reference: one entry at a time through the unaligned path.
  const ref = Buffer.alloc(bytes);
  for (let at = 0; at < bytes; at += 3) map.fillFat(ref.subarray(at, Math.min(bytes, at + 3)), at);
  expect(ref.readUInt32LE(0)).toBe(0x0ffffff8);
  const whole = Buffer.alloc(bytes);
  map.fillFat(whole, 0);
  expect(whole.equals(ref)).toBe(true);
  for (let i = 0; i < 200; i++) {
    const at = rng.int(0, bytes / 4 - 1) * 4;
    const len = rng.int(1, Math.min(600, bytes / 4 - at / 4)) * 4;
    const part = Buffer.alloc(len, 0xee);
    map.fillFat(part, at);
    expect(part.equals(ref.subarray(at, at + len)), `FAT bytes at ${at}+${len}`).toBe(true);
  }
});
