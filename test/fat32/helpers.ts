/**
 * Helpers for the FAT32 tests: generated source trees, writing a volume to an image file, and the
 * tools we did not write (fsck.fat on a loop device, mtools, sfdisk) run against it.
 */
import { execFile } from 'node:child_process';
import { promises as fsp, openSync, closeSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { BlockDevice } from '../../appliance/src/block/device.js';
import { isAllZero } from '../../appliance/src/block/device.js';
import { expect } from 'vitest';
import { Rng } from '../helpers/random.js';

const execFileP = promisify(execFile);

export async function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await execFileP(cmd, args, { maxBuffer: 256 * 1024 * 1024, encoding: 'utf8', env: { ...process.env, ...env } });
    return { stdout, stderr, code: 0 };
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; code?: number };
    return { stdout: err.stdout ?? '', stderr: err.stderr ?? '', code: typeof err.code === 'number' ? err.code : 1 };
  }
}

/** Writes the whole device to a sparse image file (zero chunks become holes). */
export async function writeImage(dev: BlockDevice, path: string): Promise<void> {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, dev.size);
    const chunk = Buffer.alloc(4 * 1024 * 1024);
    for (let pos = 0; pos < dev.size; pos += chunk.length) {
      const n = Math.min(chunk.length, dev.size - pos);
      const part = chunk.subarray(0, n);
      await dev.read(part, pos);
      if (!isAllZero(part)) writeSync(fd, part, 0, n, pos);
    }
  } finally {
    closeSync(fd);
  }
}

/** `fsck.fat -n` on the partition through a loop device at 1 MiB; the loop device is always detached. */
export async function fsckPartition(image: string, partitionBytes: number): Promise<{ code: number; output: string }> {
  const loop = await run('losetup', ['-f', '--show', '-r', '-o', '1048576', '--sizelimit', String(partitionBytes), image]);
  if (loop.code !== 0) throw new Error(`losetup failed: ${loop.stderr}`);
  const dev = loop.stdout.trim();
  try {
    const r = await run('fsck.fat', ['-n', '-v', dev]);
    return { code: r.code, output: r.stdout + r.stderr };
  } finally {
    await run('losetup', ['-d', dev]);
  }
}

/** The lines of fsck.fat's verbose output that report a problem (anything that is not its normal chatter). */
export function fsckProblems(output: string): string[] {
  const normal = [
    /^fsck\.fat \d/,
    /^Checking we can access the last sector/,
    /^Boot sector contents:/,
    /^System ID/,
    /^Media byte/,
    /^\s*\d+ bytes per logical sector/,
    /^\s*\d+ bytes per cluster/,
    /^\s*\d+ reserved sectors/,
    /^First FAT starts at/,
    /^\s*\d+ FATs, \d+ bit entries/,
    /^\s*\d+ bytes per FAT/,
    /^Root directory start at cluster/,
    /^Data area starts at byte/,
    /^\s*\d+ data clusters/,
    /^\s*\d+ sectors\/track, \d+ heads/,
    /^\s*\d+ hidden sectors/,
    /^\s*\d+ sectors total/,
    /^Checking for unused clusters/,
    /^Checking free cluster summary/,
    /^Starting check\/repair pass/,
    /^Starting verification pass/,
    /^Reclaiming unconnected clusters/,
    /^Checking for bad clusters/,
    /^\/dev\/loop\d+: \d+ files, \d+\/\d+ clusters/,
    /^Volume label/,
    /^$/,
  ];
  return output.split('\n').filter((l) => !normal.some((re) => re.test(l)));
}

/** Runs a command and returns its raw stdout (for file contents). */
export async function runBuffer(cmd: string, args: string[], env: Record<string, string> = {}): Promise<Buffer> {
  const { stdout } = await execFileP(cmd, args, { maxBuffer: 256 * 1024 * 1024, encoding: 'buffer', env: { ...process.env, ...env } });
  return stdout;
}

export const mtoolsEnv = { MTOOLS_SKIP_CHECK: '1', MTOOLS_NO_VFAT: '', LC_ALL: 'C.UTF-8', TZ: process.env.TZ ?? 'UTC' };

export async function mtools(cmd: string, args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  return run(cmd, args, mtoolsEnv);
}

export interface TreeFile {
  path: string; // relative, '/'-separated, as on the source
  content: Buffer;
}

/** Every regular file and directory below `dir`, as relative paths → contents ('dir' for directories). */
export async function readTree(dir: string): Promise<Map<string, Buffer | 'dir'>> {
  const out = new Map<string, Buffer | 'dir'>();
  async function walk(rel: string): Promise<void> {
    for (const d of await fsp.readdir(join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${d.name}` : d.name;
      if (d.isDirectory()) {
        out.set(r, 'dir');
        await walk(r);
      } else if (d.isFile()) out.set(r, await fsp.readFile(join(dir, r)));
    }
  }
  await walk('');
  return out;
}

/** `mcopy -s` of the volume in `image` (partition at 1 MiB) into `out`: it must hold exactly the tree's files and directories. */
export async function expectVolumeHolds(image: string, out: string, tree: MixedTree): Promise<void> {
  await fsp.mkdir(out, { recursive: true });
  const r = await mtools('mcopy', ['-s', '-n', '-i', `${image}@@1M`, '::/*', out]);
  expect(r.code, r.stderr).toBe(0);
  const got = await readTree(out);
  expect([...got.keys()].sort()).toEqual([...tree.expected.keys()].sort());
  for (const [path, want] of tree.expected) if (want !== 'dir') expect((got.get(path) as Buffer).equals(want), path).toBe(true);
}

export interface MixedTree {
  /** What mtools must read back: relative FAT path → contents or 'dir'. */
  expected: Map<string, Buffer | 'dir'>;
  /** Source paths that must be reported as left out, with a word of the reason. */
  leftOut: Map<string, string>;
  /** Source path → the long name used on the volume. */
  renamed: Map<string, string>;
}

/**
 * A source tree that mixes name kinds, sizes around the cluster size, depth, empty files and
 * directories, and things FAT cannot hold. Returns what a correct volume shows.
 */
export async function makeMixedTree(root: string, clusterSize: number, seed: number): Promise<MixedTree> {
  const rng = new Rng(seed);
  const expected = new Map<string, Buffer | 'dir'>();
  const leftOut = new Map<string, string>();
  const renamed = new Map<string, string>();
  const file = async (rel: string, size: number, shown: string | null = rel): Promise<void> => {
    const data = rng.bytes(size);
    await fsp.writeFile(join(root, rel), data);
    if (shown !== null) expected.set(shown, data);
  };
  const dir = async (rel: string, shown: string | null = rel): Promise<void> => {
    await fsp.mkdir(join(root, rel));
    if (shown !== null) expected.set(shown, 'dir');
  };
  const sizes = [0, 1, clusterSize - 1, clusterSize, clusterSize + 1, 3 * clusterSize + 17, 1_500_000 + rng.int(0, 5000)];
  // Name kinds, each with every size.
  const names = [
    'UPPER.TXT',
    'lower.txt',
    'Mixed Case Name.Data',
    'a.b.c.d',
    '.hidden',
    'Ünïcödé-名前-Ωμέγα.bin',
    'no_ext',
    'x',
    'plus+sign;semi=eq[1].txt',
    'spaces  inside .txt',
  ];
  for (const n of names) for (const [i, s] of sizes.entries()) await file(`${n}-${i}`, s);
  // Many names sharing one 8.3 basis: numeric tails must never collide.
  for (let i = 0; i < 40; i++) await file(`longfilename-${i}.text`, rng.int(0, 300));
  await file('LONGFI~1.TEX', 5); // an exact name equal to a generated short name's first candidate
  // A long name near the limit (255 UTF-16 units).
  await file('L'.repeat(250) + '.long', 10);
  // Mapped names: forbidden characters become '_', trailing dots and spaces are dropped.
  await file('what?.txt', 20, 'what_.txt');
  renamed.set('what?.txt', 'what_.txt');
  await file('a:b*c.txt', 21, 'a_b_c.txt');
  renamed.set('a:b*c.txt', 'a_b_c.txt');
  await file('trailing. . ', 22, 'trailing');
  renamed.set('trailing. . ', 'trailing');
  await file('...', 3, null);
  leftOut.set('...', 'empty');
  // Case-only conflict: unmapped names in code-unit order, the first wins ('CASE.txt' < 'case.txt').
  await file('CASE.txt', 30);
  await file('case.txt', 31, null);
  leftOut.set('case.txt', 'case');
  // A mapped name colliding with an existing one loses to it.
  await file('taken_.txt', 32);
  await file('taken?.txt', 33, null);
  leftOut.set('taken?.txt', 'case');
  // A name that is not UTF-8 (reported with its bytes read as latin1).
  await fsp.writeFile(Buffer.concat([Buffer.from(`${root}/bad-`), Buffer.from([0xff, 0xfe])]), 'x');
  leftOut.set('bad-\u00ff\u00fe', 'UTF-8');
  // Depth.
  let deep = '';
  for (let d = 0; d < 24; d++) {
    deep = deep ? `${deep}/level ${d} directory` : 'deep';
    await dir(deep);
  }
  await file(`${deep}/bottom.txt`, 1234);
  // Empty directories and a directory with many entries (several clusters of directory data).
  await dir('empty');
  await dir('.hidden dir');
  await dir('empty/inner');
  await dir('many');
  for (let i = 0; i < 300; i++) await file(`many/entry number ${i} with a long name.dat`, rng.int(0, 3) === 0 ? 0 : rng.int(1, 2000));
  // Things FAT cannot hold.
  await fsp.symlink('UPPER.TXT-1', join(root, 'a symlink'));
  leftOut.set('a symlink', 'symbolic link');
  await run('mkfifo', [join(root, 'a fifo')]);
  leftOut.set('a fifo', 'pipe');
  const big = await fsp.open(join(root, 'huge.img'), 'w');
  await big.truncate(4 * 1024 ** 3); // sparse: costs nothing
  await big.close();
  leftOut.set('huge.img', '4 GiB');
  return { expected, leftOut, renamed };
}
