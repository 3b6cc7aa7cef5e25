/**
 * `npm run bench -- store [--size 256M]`: the chunk store (directory backend, 128 KiB chunks, zstd +
 * AES-256-GCM) beside s3backer 1.5.4 (`--test` with a local directory, --blockSize=128k --compress
 * --encrypt), both through FUSE, with the same random data:
 *   1. write everything + fsync: when fsync returns (ours: in the store or the fdatasync'ed journal),
 *      and when everything is in the store (unmount finished);
 *   2. cold sequential read after a remount with an empty cache;
 *   3. random 4 KiB reads (queue depth 1) on a cold mount.
 * s3backer gets `-o big_writes,max_write=131072`, the FUSE request size our mount uses: without it the
 * kernel sends 4 KiB writes and s3backer read-modify-writes every block (~60x slower here).
 *
 * `npm run bench -- store --cold-read 1G [--backend dir|s3rver] [--runs 2]`: ours only; fills a
 * volume of that size with random data through FUSE, then times a cold sequential read of all of it
 * (1 MiB requests) after each remount with an empty cache: the figure the exports read through.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseSize } from '../../shared/src/size.js';
import { startS3rver, type S3Server } from '../store/helpers.js';

const REPO = resolve(import.meta.dirname, '../..');
/**
 * Our mounts run with libuv's pool at 32 threads, as the agent should be run (docs/store.md): uploads
 * to a directory are fsync-bound, and Node 20 starts the pool (4 threads) while it loads an ES module
 * entry, before any code of ours could raise it. Override by setting UV_THREADPOOL_SIZE.
 */
const mountEnv = (): NodeJS.ProcessEnv => ({ ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '32' });
const MiB = 1024 * 1024;

interface Figures {
  fsyncS: number;
  storedS: number;
  /** CPU seconds the mount process used from the first write until it had stored everything. */
  writeCpuS: number;
  coldReadS: number;
  randomIops: number;
  objects: number;
}

async function waitFor(pred: () => boolean | Promise<boolean>, what: string, ms = 30_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function mounted(mnt: string): boolean {
  return execFileSync('cat', ['/proc/mounts'], { encoding: 'utf8' }).includes(` ${mnt} `);
}

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', () => r()));
}

async function writeAll(file: string, data: Buffer): Promise<number> {
  const fh = await fsp.open(file, 'r+');
  try {
    for (let off = 0; off < data.length; off += MiB) await fh.write(data, off, MiB, off);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return performance.now();
}

async function readAll(file: string, size: number, expect: Buffer): Promise<void> {
  const fh = await fsp.open(file, 'r');
  const b = Buffer.alloc(MiB);
  try {
    for (let off = 0; off < size; off += MiB) {
      await fh.read(b, 0, MiB, off);
      if (!b.equals(expect.subarray(off, off + MiB))) throw new Error(`read back different bytes at ${off}`);
    }
  } finally {
    await fh.close();
  }
}

async function randomReads(file: string, size: number, expect: Buffer, budgetMs = 10_000, max = 2000): Promise<number> {
  const fh = await fsp.open(file, 'r');
  const b = Buffer.alloc(4096);
  let n = 0;
  const t0 = performance.now();
  try {
    while (n < max && performance.now() - t0 < budgetMs) {
      const off = Math.floor(Math.random() * (size / 4096)) * 4096;
      await fh.read(b, 0, 4096, off);
      if (!b.equals(expect.subarray(off, off + 4096))) throw new Error(`random read: different bytes at ${off}`);
      n++;
    }
  } finally {
    await fh.close();
  }
  return n / ((performance.now() - t0) / 1000);
}

/** CPU seconds (user + system) a process has used so far (Linux /proc; 0 elsewhere). */
function cpuSeconds(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
}

/** Samples a process's CPU time until it exits; the last sample is at most 20 ms before the exit. */
function cpuWatch(pid: number): { stop: () => number } {
  const start = cpuSeconds(pid);
  let last = start;
  const t = setInterval(() => {
    const c = cpuSeconds(pid);
    if (c > 0) last = c;
  }, 20);
  return {
    stop: () => {
      clearInterval(t);
      return last - start;
    },
  };
}

function countFiles(d: string): number {
  let n = 0;
  for (const e of readdirSync(d, { withFileTypes: true, recursive: true })) if (e.isFile()) n++;
  return n;
}

async function ours(work: string, size: number, data: Buffer): Promise<Figures> {
  const storeDir = join(work, 'ours-store');
  const pass = join(work, 'pass');
  const base = ['--import', 'tsx', 'appliance/src/cli.ts', 'store'];
  execFileSync(process.execPath, [...base, 'create', '--store', `dir:${storeDir}`, '--size', String(size), '--chunk-size', '128K', '--passphrase-file', pass], {
    cwd: REPO,
    stdio: 'ignore',
  });
  const mnt = join(work, 'ours-mnt');
  const mountIt = async (cache: string): Promise<ChildProcess> => {
    const child = spawn(
      process.execPath,
      [
        // BRIDGE_BENCH_PROFILE=DIR writes a CPU profile of each mount process there.
        ...(process.env.BRIDGE_BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BRIDGE_BENCH_PROFILE}`] : []),
        ...base,
        'mount',
        '--store',
        `dir:${storeDir}`,
        '--passphrase-file',
        pass,
        '--cache-dir',
        join(work, cache),
        '--cache-size',
        '1G',
        '--log-level',
        'warn',
        mnt,
      ],
      { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'], env: mountEnv() },
    );
    await new Promise<void>((res, rej) => {
      child.stdout!.once('data', () => res());
      child.once('exit', (c) => rej(new Error(`store mount exited with ${c}`)));
    });
    return child;
  };
  let child = await mountIt('cache-w');
  const file = join(mnt, 'disk.img');
  const cpu = cpuWatch(child.pid!);
  const t0 = performance.now();
  const tFsync = await writeAll(file, data);
  process.kill(child.pid!, 'SIGTERM'); // flushes, uploads everything, unmounts
  await exited(child);
  const tStored = performance.now();
  const writeCpuS = cpu.stop();
  const objects = countFiles(join(storeDir, 'c'));

  child = await mountIt('cache-r1');
  const r0 = performance.now();
  await readAll(file, size, data);
  const coldReadS = (performance.now() - r0) / 1000;
  process.kill(child.pid!, 'SIGTERM');
  await exited(child);

  child = await mountIt('cache-r2');
  const randomIops = await randomReads(file, size, data);
  process.kill(child.pid!, 'SIGTERM');
  await exited(child);
  return { fsyncS: (tFsync - t0) / 1000, storedS: (tStored - t0) / 1000, writeCpuS, coldReadS, randomIops, objects };
}

async function s3backer(work: string, size: number, data: Buffer): Promise<Figures> {
  const bucket = join(work, 's3b-bucket');
  const mnt = join(work, 's3b-mnt');
  mkdirSync(bucket, { recursive: true });
  mkdirSync(mnt, { recursive: true });
  const mountIt = async (): Promise<ChildProcess> => {
    const child = spawn(
      's3backer',
      [
        '--test',
        '--quiet',
        '--blockSize=128k',
        '--compress',
        '--encrypt',
        `--passwordFile=${join(work, 'pass')}`,
        `--size=${size}`,
        '-o',
        'big_writes,max_write=131072',
        '-f',
        bucket,
        mnt,
      ],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    await waitFor(() => mounted(mnt), 's3backer mount');
    return child;
  };
  const unmount = async (child: ChildProcess): Promise<void> => {
    execFileSync('fusermount', ['-u', mnt]);
    await exited(child);
  };
  let child = await mountIt();
  const file = join(mnt, 'file');
  const cpu = cpuWatch(child.pid!);
  const t0 = performance.now();
  const tFsync = await writeAll(file, data);
  await unmount(child); // s3backer writes its remaining dirty blocks before it exits
  const tStored = performance.now();
  const writeCpuS = cpu.stop();
  const objects = countFiles(bucket);

  child = await mountIt();
  const r0 = performance.now();
  await readAll(file, size, data);
  const coldReadS = (performance.now() - r0) / 1000;
  await unmount(child);

  child = await mountIt();
  const randomIops = await randomReads(file, size, data);
  await unmount(child);
  return { fsyncS: (tFsync - t0) / 1000, storedS: (tStored - t0) / 1000, writeCpuS, coldReadS, randomIops, objects };
}

/** Fills a volume through FUSE, then times cold sequential reads of it after remounts with empty caches. */
async function coldReads(work: string, size: number, backend: 'dir' | 's3rver', runs: number): Promise<{ s: number; cpu: number }[]> {
  const pass = join(work, 'pass');
  let s3: S3Server | undefined;
  try {
    let location: string[];
    if (backend === 's3rver') {
      s3 = await startS3rver(['bench']);
      location = ['--store', 's3://bench/vol', '--endpoint', s3.endpoint];
    } else location = ['--store', `dir:${join(work, 'cold-store')}`];
    const base = ['--import', 'tsx', 'appliance/src/cli.ts', 'store'];
    execFileSync(process.execPath, [...base, 'create', ...location, '--size', String(size), '--passphrase-file', pass], { cwd: REPO, stdio: 'ignore' });
    const mnt = join(work, 'cold-mnt');
    const mountIt = async (cache: string): Promise<ChildProcess> => {
      const args = [...base, 'mount', ...location, '--passphrase-file', pass, '--cache-dir', join(work, cache), '--cache-size', String(size + 256 * MiB)];
      const child = spawn(process.execPath, [...args, '--log-level', 'warn', mnt], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'], env: mountEnv() });
      await new Promise<void>((res, rej) => {
        child.stdout!.once('data', () => res());
        child.once('exit', (c) => rej(new Error(`store mount exited with ${c}`)));
      });
      return child;
    };
    const file = join(mnt, 'disk.img');
    // Fill in 64 MiB pieces of random data (the same piece repeated would compress: vary it).
    const piece = randomBytes(64 * MiB);
    let child = await mountIt('cold-fill');
    const fh = await fsp.open(file, 'r+');
    for (let off = 0; off < size; off += piece.length) {
      piece.writeUInt32LE(off / piece.length, 0);
      for (let i = 0; i < piece.length; i += MiB) piece.writeUInt32LE(off + i, i + 4);
      await fh.write(piece, 0, Math.min(piece.length, size - off), off);
    }
    await fh.close();
    process.kill(child.pid!, 'SIGTERM');
    await exited(child);
    const times: { s: number; cpu: number }[] = [];
    for (let r = 0; r < runs; r++) {
      child = await mountIt(`cold-read-${r}`);
      const rf = await fsp.open(file, 'r');
      const b = Buffer.alloc(MiB);
      const c0 = cpuSeconds(child.pid!);
      const t0 = performance.now();
      for (let off = 0; off < size; off += MiB) await rf.read(b, 0, MiB, off);
      times.push({ s: (performance.now() - t0) / 1000, cpu: cpuSeconds(child.pid!) - c0 });
      await rf.close();
      process.kill(child.pid!, 'SIGTERM');
      await exited(child);
    }
    return times;
  } finally {
    await s3?.stop();
  }
}

export async function run(args: string[]): Promise<void> {
  const cold = args.indexOf('--cold-read');
  if (cold >= 0) {
    const size = parseSize(args[cold + 1] ?? '', '--cold-read');
    const b = args.indexOf('--backend');
    const backend = b >= 0 ? args[b + 1] : 'dir';
    if (backend !== 'dir' && backend !== 's3rver') throw new Error(`--backend ${backend}: expected dir or s3rver`);
    const r = args.indexOf('--runs');
    const runs = r >= 0 ? Number(args[r + 1]) : 2;
    const work = join(tmpdir(), `bridge-bench-store-${process.pid}`);
    mkdirSync(work, { recursive: true });
    writeFileSync(join(work, 'pass'), 'benchmark passphrase\n');
    try {
      const times = await coldReads(work, size, backend, runs);
      const mb = size / MiB;
      process.stdout.write(
        `\ncold sequential read of ${mb} MiB (random data, 128 KiB chunks, zstd + aes-256-gcm, ${backend} backend, 1 MiB reads through FUSE):\n` +
          times.map((t) => `  ${t.s.toFixed(2)} s (${(mb / t.s).toFixed(0)} MB/s), mount process CPU ${t.cpu.toFixed(2)} s`).join('\n') +
          '\n',
      );
    } finally {
      try {
        execFileSync('fusermount', ['-uz', join(work, 'cold-mnt')], { stdio: 'ignore' });
      } catch {
        /* not mounted */
      }
      rmSync(work, { recursive: true, force: true });
    }
    return;
  }
  const sizeArg = args.indexOf('--size');
  const size = sizeArg >= 0 ? parseSize(args[sizeArg + 1] ?? '', '--size') : 256 * MiB;
  const only = args.includes('--ours-only') ? 'ours' : args.includes('--s3backer-only') ? 's3backer' : 'both';
  const work = join(tmpdir(), `bridge-bench-store-${process.pid}`);
  mkdirSync(work, { recursive: true });
  writeFileSync(join(work, 'pass'), 'benchmark passphrase\n');
  const data = randomBytes(size);
  const mb = size / MiB;
  const results: [string, Figures][] = [];
  try {
    if (only !== 's3backer') results.push(['bridge store', await ours(work, size, data)]);
    if (only !== 'ours') results.push(['s3backer 1.5.4', await s3backer(work, size, data)]);
  } finally {
    for (const m of ['ours-mnt', 's3b-mnt']) {
      try {
        execFileSync('fusermount', ['-uz', join(work, m)], { stdio: 'ignore' });
      } catch {
        /* not mounted */
      }
    }
    rmSync(work, { recursive: true, force: true });
  }
  const line = (cols: string[]): string => cols.map((c, i) => (i === 0 ? c.padEnd(16) : c.padStart(18))).join('');
  process.stdout.write(`\n${mb} MiB of random data, 128 KiB chunks, compression + encryption, directory backend\n`);
  process.stdout.write(line(['', 'fsync returned', 'all in store', 'write CPU', 'cold seq. read', 'random 4K reads', 'objects']) + '\n');
  for (const [name, f] of results) {
    process.stdout.write(
      line([
        name,
        `${f.fsyncS.toFixed(2)} s`,
        `${f.storedS.toFixed(2)} s (${(mb / f.storedS).toFixed(0)} MB/s)`,
        `${f.writeCpuS.toFixed(2)} s`,
        `${f.coldReadS.toFixed(2)} s (${(mb / f.coldReadS).toFixed(0)} MB/s)`,
        `${f.randomIops.toFixed(0)} IOPS`,
        String(f.objects),
      ]) + '\n',
    );
  }
  if (results.length === 2) {
    const [a, b] = [results[0]![1], results[1]![1]];
    process.stdout.write(
      `\nbridge vs s3backer: durable write ${(b.storedS / a.storedS).toFixed(1)}x (until all stored; ours fsync = stored-or-journaled), ` +
        `cold read ${(b.coldReadS / a.coldReadS).toFixed(1)}x, random 4K reads ${(a.randomIops / b.randomIops).toFixed(1)}x\n`,
    );
  }
}
