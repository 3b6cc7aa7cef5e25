/**
 * Scale (CI size): 20,000 files in 2,000 directories. The metadata model stays compact (heap growth
 * is bounded: no per-cluster objects), fsck.fat accepts the result and mtools lists every file.
 * The full 100,000-file figure comes from `npm run bench -- fat32 --scale` (docs/fat32.md).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildFat32Volume } from '../../appliance/src/fat32/index.js';
import { fsckPartition, fsckProblems, mtools, writeImage } from './helpers.js';

const FILES = 20_000;
const DIRS = 2_000;

describe(`FAT32 volume at scale: ${FILES} files in ${DIRS} directories`, () => {
  const dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-scale-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('builds with bounded memory, passes fsck.fat and lists every file', async () => {
    const src = join(dir, 'src');
    mkdirSync(src);
    for (let d = 0; d < DIRS; d++) {
      const sub = join(src, `directory with a long name ${d}`);
      mkdirSync(sub);
      for (let f = 0; f < FILES / DIRS; f++) writeFileSync(join(sub, `file with a long name ${f}.txt`), `${d}/${f}\n`);
    }
    // The model's memory: JS heap plus the typed-array columns (ArrayBuffers live outside the heap).
    const held = (): number => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    global.gc?.();
    const before = held();
    const vol = await buildFat32Volume(src);
    global.gc?.();
    const growth = held() - before;
    const image = join(dir, 'disk.img');
    try {
      expect(vol.report().files).toBe(FILES);
      // ~100-250 bytes per entry (plus garbage when gc is not exposed); the bound catches a model that
      // grows per cluster or holds file contents (20,000 × 4 KiB would be 80 MB).
      expect(growth).toBeLessThan(40 * 1024 * 1024);
      await writeImage(vol, image);
    } finally {
      await vol.close();
    }
    const r = await fsckPartition(image, vol.size - 1024 * 1024);
    expect(fsckProblems(r.output), r.output).toEqual([]);
    // fsck.fat counts the volume label entry as a file too.
    expect(r.output).toMatch(new RegExp(`: ${FILES + DIRS + 1} files`));
    const list = await mtools('mdir', ['-/', '-b', '-i', `${image}@@1M`, '::/']);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout.split('\n').filter((l) => l.endsWith('.txt')).length).toBe(FILES);
  });
});
