/**
 * The synthesized volume checked with tools we did not write: fsck.fat on a loop device at the
 * partition offset, mtools reading every file back, sfdisk reading the partition table. The device
 * is written to an image file through read() (fast); test/fat32/serve.test.ts goes through FUSE.
 */
import { mkdtempSync, rmSync, promises as fsp, utimesSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildFat32Volume, type Fat32Report } from '../../appliance/src/fat32/index.js';
import { fsckPartition, fsckProblems, makeMixedTree, mtools, mtoolsEnv, readTree, run, runBuffer, writeImage, type MixedTree } from './helpers.js';

interface Case {
  name: string;
  /** Disk size; undefined = the default rule. */
  size?: number;
  clusterSize: number;
}

const MIB = 1024 * 1024;
const cases: Case[] = [
  { name: 'default size, 4 KiB clusters', clusterSize: 4096 },
  { name: '256 MiB (2 KiB clusters: 4 KiB would make fewer than 65,525)', size: 256 * MIB, clusterSize: 2048 },
  { name: '40 MiB, 512-byte clusters (near the FAT32 minimum)', size: 40 * MIB, clusterSize: 512 },
];

for (const c of cases) {
  describe(`FAT32 volume from a mixed tree: ${c.name}`, () => {
    let dir = '';
    let image = '';
    let tree: MixedTree;
    let report: Fat32Report;
    let diskSize = 0;

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-'));
      const src = join(dir, 'src');
      await fsp.mkdir(src);
      tree = await makeMixedTree(src, c.clusterSize, 42 + c.clusterSize);
      // Timestamps and modes worth checking.
      utimesSync(join(src, 'x-1'), new Date('1970-01-02T00:00:00Z'), new Date('1970-01-02T00:00:00Z'));
      utimesSync(join(src, 'x-2'), new Date('2150-06-01T00:00:00Z'), new Date('2150-06-01T00:00:00Z'));
      chmodSync(join(src, 'x-3'), 0o444);
      const vol = await buildFat32Volume(src, c.size !== undefined ? { size: c.size, label: 'Mixed' } : { label: 'Mixed' });
      try {
        expect(vol.geometry.clusterSize).toBe(c.clusterSize);
        report = vol.report();
        diskSize = vol.size;
        image = join(dir, 'disk.img');
        await writeImage(vol, image);
      } finally {
        await vol.close();
      }
    });

    afterAll(() => {
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it('sfdisk sees one FAT32 (LBA) partition at 1 MiB to the end of the disk', async () => {
      const r = await run('sfdisk', ['-d', image]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain('label: dos');
      const line = r.stdout.split('\n').find((l) => l.startsWith(`${image}1 :`));
      expect(line).toBeDefined();
      expect(line).toMatch(new RegExp(`start=\\s*2048, size=\\s*${diskSize / 512 - 2048}, type=c$`));
    });

    it('fsck.fat -n finds nothing to fix', async () => {
      const r = await fsckPartition(image, diskSize - MIB);
      expect(fsckProblems(r.output), r.output).toEqual([]);
      expect(r.code, r.output).toBe(0);
      expect(r.output).toMatch(new RegExp(`${c.clusterSize} bytes per cluster`));
      // A real FAT32: at least 65,525 clusters.
      const clusters = Number(/(\d+) data clusters/.exec(r.output)?.[1]);
      expect(clusters).toBeGreaterThanOrEqual(65525);
    });

    it('mcopy -s reads every file and directory back identical', async () => {
      const out = join(dir, 'out');
      await fsp.mkdir(out);
      const r = await mtools('mcopy', ['-s', '-m', '-n', '-i', `${image}@@1M`, '::/*', out]);
      expect(r.code, r.stderr).toBe(0);
      const got = await readTree(out);
      const missing = [...tree.expected.keys()].filter((k) => !got.has(k));
      const extra = [...got.keys()].filter((k) => !tree.expected.has(k));
      expect({ missing, extra }).toEqual({ missing: [], extra: [] });
      for (const [path, want] of tree.expected) {
        const have = got.get(path)!;
        if (want === 'dir') expect(have, path).toBe('dir');
        else expect(Buffer.isBuffer(have) && have.equals(want), `contents of ${path}`).toBe(true);
      }
      // mtime survives with FAT's 2-second resolution (mcopy -m), and out-of-range dates are clamped.
      const st = await fsp.stat(join(out, 'lower.txt-3'));
      const srcSt = await fsp.stat(join(dir, 'src', 'lower.txt-3'));
      expect(Math.abs(st.mtimeMs - srcSt.mtimeMs)).toBeLessThan(2001);
      // (mdir, not mcopy: mtools 4.0.32 converts 2107-12-31 to 2108-01-01 when setting a Unix mtime.)
      const dates = await mtools('mdir', ['-i', `${image}@@1M`, '::/x-1', '::/x-2']);
      expect(dates.stdout).toMatch(/^X-1 .* 1980-01-01 +0:00 +x-1$/m);
      expect(dates.stdout).toMatch(/^X-2 .* 2107-12-31 +23:59 +x-2$/m);
    });

    it('mtype prints a file, mdir lists distinct short names, mattrib shows read-only and hidden', async () => {
      const t = await runBuffer(
        'mtype',
        [
          '-i',
          `${image}@@1M`,
          '::/deep/level 1 directory/level 2 directory/level 3 directory/level 4 directory/level 5 directory/level 6 directory/level 7 directory/level 8 directory/level 9 directory/level 10 directory/level 11 directory/level 12 directory/level 13 directory/level 14 directory/level 15 directory/level 16 directory/level 17 directory/level 18 directory/level 19 directory/level 20 directory/level 21 directory/level 22 directory/level 23 directory/bottom.txt',
        ],
        mtoolsEnv,
      );
      const deepKey = [...tree.expected.keys()].find((k) => k.endsWith('bottom.txt'))!;
      expect(t.equals(tree.expected.get(deepKey) as Buffer)).toBe(true);
      const d = await mtools('mdir', ['-i', `${image}@@1M`, '::/']);
      expect(d.code, d.stderr).toBe(0);
      expect(d.stdout).toContain('Volume in drive : is MIXED');
      const shortNames = d.stdout
        .split('\n')
        .filter((l) => /^\S.{11} /.test(l) && !l.startsWith(' ') && !/^(Directory|Volume)/.test(l))
        .map((l) => l.slice(0, 12));
      expect(shortNames.length).toBeGreaterThan(50);
      expect(new Set(shortNames).size).toBe(shortNames.length);
      expect(shortNames).toContain('LONGFI~1 TEX');
      expect(shortNames).toContain('LONGFI~2 TEX'); // the generated name stepped over the exact one
      const a = await mtools('mattrib', ['-i', `${image}@@1M`, '::/x-3', '::/.hidden-0', '::/x-4']);
      expect(a.code, a.stderr).toBe(0);
      const attrs = new Map(
        a.stdout
          .split('\n')
          .filter(Boolean)
          .map((l) => [l.slice(l.indexOf('::/') + 3), l.slice(0, l.indexOf('::/'))]),
      );
      expect(attrs.get('x-3')).toContain('R');
      expect(attrs.get('.hidden-0')).toContain('H');
      expect(attrs.get('x-4')).not.toMatch(/[RH]/);
    });

    it('reports every left-out and renamed entry with its reason', () => {
      for (const [path, word] of tree.leftOut) {
        const e = report.leftOut.find((l) => l.path === path);
        expect(e, `left out ${path}`).toBeDefined();
        expect(e!.reason).toContain(word);
      }
      expect(report.leftOut.length).toBe(tree.leftOut.size);
      for (const [path, name] of tree.renamed) expect(report.renamed).toContainEqual({ path, name });
      expect(report.renamed.length).toBe(tree.renamed.size);
      expect(report.files).toBe([...tree.expected.values()].filter((v) => v !== 'dir').length);
    });
  });
}

describe('FAT32 volume limits', () => {
  it('refuses a size that cannot hold the tree, and one below the FAT32 minimum, naming the problem', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-'));
    try {
      await fsp.writeFile(join(dir, 'big'), Buffer.alloc(50 * MIB, 1));
      await expect(buildFat32Volume(dir, { size: 40 * MIB })).rejects.toThrow(/needs 50\.0 MiB .* give a larger size/);
      await expect(buildFat32Volume(dir, { size: 20 * MIB })).rejects.toThrow(/too small: the minimum is/);
      await expect(buildFat32Volume(dir, { size: 3 * 1024 ** 4 })).rejects.toThrow(/MBR limit/);
      await expect(buildFat32Volume(dir, { label: 'bad/label' })).rejects.toThrow(/volume label/);
      await expect(buildFat32Volume(join(dir, 'big'))).rejects.toThrow(/not a directory/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('default size: the tree plus max(10%, 256 MiB), 4 KiB clusters', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-'));
    try {
      await fsp.writeFile(join(dir, 'f'), Buffer.alloc(10, 1));
      const vol = await buildFat32Volume(dir);
      try {
        expect(vol.geometry.clusterSize).toBe(4096);
        const free = vol.report().freeClusters * 4096;
        expect(free).toBeGreaterThanOrEqual(256 * MIB);
        expect(free).toBeLessThan(260 * MIB);
      } finally {
        await vol.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
