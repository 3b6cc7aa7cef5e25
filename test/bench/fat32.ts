/**
 * `npm run bench -- fat32 [--scale]`
 *
 * Default: our synthesized FAT32 disk beside nbdkit's floppy plugin on the same tree (20,000 files
 * in 100 directories plus one 512 MiB file, generated once under /var/tmp and reused), `--rounds=N`
 * times (default 2): time from start until the boot sector can be read over NBD (the same probe
 * for both), whole-device read with nbdcopy over NBD (same transport, same client), our FUSE file
 * read by nbdcopy too, peak RSS of the serving process. Our disk gets nbdkit's size so both reads
 * move the same bytes; ours serves --read-only, as nbdkit floppy does.
 *
 * --scale: 100,000 files in 10,000 directories: time to build, peak RSS and heap of the serving
 * process, and fsck.fat over the FUSE file through a loop device.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, openSync, closeSync, writeSync, promises as fsp, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { Rng } from '../helpers/random.js';
import { NbdClientDevice } from '../nbd/client.js';

const execFileP = promisify(execFile);
const CLI = resolve(import.meta.dirname, '../../dist/appliance/src/cli.js');
const MIB = 1024 * 1024;

function say(line: string): void {
  process.stdout.write(line + '\n');
}

/** Peak resident set (VmHWM) of a process, bytes. */
async function peakRss(pid: number): Promise<number> {
  const status = await fsp.readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
}

async function makeTree(root: string, files: number, dirs: number, bigFile: boolean, seed: number): Promise<void> {
  const marker = join(root, '.complete');
  if (existsSync(marker)) return;
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  say(`generating ${files} files in ${dirs} directories${bigFile ? ' + one 512 MiB file' : ''} under ${root} (once)`);
  const rng = new Rng(seed);
  const pool = randomBytes(64 * 1024);
  for (let d = 0; d < dirs; d++) {
    const dir = join(root, `directory ${String(d).padStart(5, '0')}`);
    mkdirSync(dir);
    for (let f = 0; f < files / dirs; f++) {
      const size = rng.int(0, 50_000);
      await fsp.writeFile(join(dir, `file-${String(f).padStart(6, '0')}.dat`), pool.subarray(rng.int(0, pool.length - size), undefined).subarray(0, size));
    }
  }
  if (bigFile) {
    const fd = openSync(join(root, 'big.bin'), 'w');
    for (let i = 0; i < 32; i++) writeSync(fd, randomBytes(16 * MIB));
    closeSync(fd);
  }
  await fsp.writeFile(marker, '');
}

async function waitFor<T>(probe: () => Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`${what} not ready in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** True once an NBD server on the socket completes the handshake and returns a boot sector (0x55AA). */
async function nbdReadable(sock: string): Promise<true | undefined> {
  const dev = await NbdClientDevice.connect(sock);
  try {
    const b = Buffer.alloc(512);
    await dev.read(b, 0);
    return b[510] === 0x55 && b[511] === 0xaa ? true : undefined;
  } finally {
    await dev.close();
  }
}

async function firstSectorReadable(file: string): Promise<true | undefined> {
  const fh = await fsp.open(file, 'r');
  try {
    const b = Buffer.alloc(512);
    const { bytesRead } = await fh.read(b, 0, 512, 0);
    return bytesRead === 512 && b[510] === 0x55 ? true : undefined;
  } finally {
    await fh.close();
  }
}

async function timed(cmd: string, args: string[]): Promise<number> {
  const t = process.hrtime.bigint();
  await execFileP(cmd, args, { maxBuffer: 16 * MIB });
  return Number(process.hrtime.bigint() - t) / 1e9;
}

function stop(child: ChildProcess): Promise<void> {
  return new Promise((res) => {
    if (child.exitCode !== null) return res();
    child.once('exit', () => res());
    child.kill('SIGTERM');
  });
}

interface Ours {
  child: ChildProcess;
  readyS: number;
}

/** Starts `fat32 serve --read-only` (nbdkit floppy is read-only too) and waits until its device is readable. */
async function startOurs(source: string, where: { nbd: string } | { mnt: string }, size?: number): Promise<Ours> {
  const t0 = process.hrtime.bigint();
  const target = 'nbd' in where ? ['--nbd', where.nbd] : [where.mnt];
  const cmd = ['fat32', 'serve', '--read-only', '--source', source, ...(size ? ['--size', String(size)] : []), ...target];
  const child = spawn(process.execPath, [CLI, '--log-level', 'warn', ...cmd], {
    stdio: ['ignore', 'ignore', 'inherit'],
    cwd: resolve(import.meta.dirname, '../..'),
  });
  if ('nbd' in where) await waitFor(() => nbdReadable(where.nbd), 120_000, 'bridge fat32 over NBD');
  else await waitFor(() => firstSectorReadable(join(where.mnt, 'disk.img')), 120_000, 'bridge fat32 FUSE file');
  return { child, readyS: Number(process.hrtime.bigint() - t0) / 1e9 };
}

interface Round {
  nbdkit: { ready: number; read: number; rss: number };
  nbd: { ready: number; read: number; rss: number };
  fuse: { ready: number; read: number; rss: number };
  defaultReady: number;
}

async function compare(args: string[]): Promise<void> {
  const root = args.find((a) => a.startsWith('--dir='))?.slice(6) ?? '/var/tmp/bridge-fat32-bench/tree-20k';
  const rounds = Number(args.find((a) => a.startsWith('--rounds='))?.slice(9) ?? 2);
  await makeTree(root, 20_000, 100, true, 20261122);
  const work = mkdtempSync(join(tmpdir(), 'bridge-fat32-bench-'));
  const kSock = join(work, 'nbdkit.sock');
  const oSock = join(work, 'ours.sock');
  const mnt = join(work, 'mnt');
  const uri = (sock: string): string => `nbd+unix:///?socket=${sock}`;
  const results: Round[] = [];
  let nbdSize = 0;
  try {
    for (let r = 0; r < rounds; r++) {
      // Warm the page cache of the source so neither side pays for the first touch.
      await execFileP('sh', ['-c', `cat ${JSON.stringify(root)}/big.bin > /dev/null; find ${JSON.stringify(root)} -type f -exec cat {} + > /dev/null`]);
      // nbdkit floppy
      rmSync(kSock, { force: true }); // nbdkit leaves its socket behind when stopped
      const t0 = process.hrtime.bigint();
      const nbd = spawn('nbdkit', ['-f', '-U', kSock, '--exit-with-parent', 'floppy', root], { stdio: ['ignore', 'ignore', 'inherit'] });
      await waitFor(() => nbdReadable(kSock), 120_000, 'nbdkit');
      const kReady = Number(process.hrtime.bigint() - t0) / 1e9;
      nbdSize = Number((await execFileP('nbdinfo', ['--size', uri(kSock)])).stdout.trim());
      const kRead = await timed('nbdcopy', [uri(kSock), 'null:']);
      const kRss = await peakRss(nbd.pid!);
      await stop(nbd);

      // ours over NBD, same disk size, same client
      const ours = await startOurs(root, { nbd: oSock }, nbdSize);
      const oRead = await timed('nbdcopy', [uri(oSock), 'null:']);
      const oRss = await peakRss(ours.child.pid!);
      await stop(ours.child);

      // ours through the FUSE file (nbdcopy reads the file)
      const fuse = await startOurs(root, { mnt }, nbdSize);
      const fRead = await timed('nbdcopy', [join(mnt, 'disk.img'), 'null:']);
      const fRss = await peakRss(fuse.child.pid!);
      await stop(fuse.child);

      // ours with the default size (tree + headroom), ready time only
      const dflt = await startOurs(root, { nbd: oSock });
      await stop(dflt.child);
      results.push({
        nbdkit: { ready: kReady, read: kRead, rss: kRss },
        nbd: { ready: ours.readyS, read: oRead, rss: oRss },
        fuse: { ready: fuse.readyS, read: fRead, rss: fRss },
        defaultReady: dflt.readyS,
      });
    }
    // in-process: scan + layout only
    const { buildFat32Volume } = await import('../../appliance/src/fat32/index.js');
    const { configureLogger } = await import('../../shared/src/logger.js');
    configureLogger({ level: 'warn' });
    const tb = process.hrtime.bigint();
    const vol = await buildFat32Volume(root, { size: nbdSize });
    const buildS = Number(process.hrtime.bigint() - tb) / 1e9;
    await vol.close();
    // The transports' own ceilings: a memory device of the same size (all data), read the same ways.
    const memSrc = join('/dev/shm', `bridge-bench-${process.pid}.bin`);
    await execFileP('sh', ['-c', `head -c ${nbdSize} /dev/urandom > ${memSrc}`]);
    const mem = spawn(process.execPath, [CLI, '--log-level', 'warn', 'expose', '--device', `memory:${nbdSize}`, '--nbd', oSock, mnt], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    await waitFor(() => fsp.stat(join(mnt, 'disk.img')).then((st) => (st.size === nbdSize ? true : undefined)), 60_000, 'memory device');
    await execFileP('nbdcopy', [memSrc, uri(oSock)]);
    rmSync(memSrc, { force: true });
    const memNbd = await timed('nbdcopy', [uri(oSock), 'null:']);
    const memFuse = await timed('nbdcopy', [join(mnt, 'disk.img'), 'null:']);
    await stop(mem);

    const mbps = (s: number): string => `${(nbdSize / s / 1e6).toFixed(0)} MB/s`;
    const row = (name: string, x: { ready: number; read: number; rss: number }, how: string): void =>
      say(
        `${name.padEnd(26)}${x.ready.toFixed(3).padStart(8)}  ${x.read.toFixed(2)} s (${mbps(x.read)}, ${how})`.padEnd(76) + `${(x.rss / MIB).toFixed(1)} MiB`,
      );
    say(`\nFAT32 synthesis: 20,000 files in 100 directories + 512 MiB file (${root}); disk ${(nbdSize / MIB).toFixed(0)} MiB (nbdkit's size) for all`);
    results.forEach((res, i) => {
      say(`round ${i + 1}                    ready (s)  whole-device read                             peak RSS`);
      row('nbdkit floppy', res.nbdkit, 'nbdcopy over NBD');
      row('bridge fat32 --nbd', res.nbd, 'nbdcopy over NBD');
      row('bridge fat32 FUSE file', res.fuse, 'nbdcopy on disk.img');
      say(`bridge fat32 --nbd, default size: ready ${res.defaultReady.toFixed(3)} s`);
      say(
        `ratios: ready ${(res.nbd.ready / res.nbdkit.ready).toFixed(2)}x nbdkit's time (goal <= 1); read throughput over NBD ${(res.nbdkit.read / res.nbd.read).toFixed(2)}x nbdkit's, FUSE file ${(res.nbdkit.read / res.fuse.read).toFixed(2)}x (goal >= 0.8)`,
      );
    });
    say(`in-process scan + layout of the tree: ${buildS.toFixed(3)} s`);
    say(
      `transport ceilings (memory device, all data, nbdcopy): NBD ${memNbd.toFixed(2)} s (${mbps(memNbd)}), FUSE file ${memFuse.toFixed(2)} s (${mbps(memFuse)})`,
    );
  } finally {
    await execFileP('fusermount', ['-uz', mnt]).catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  }
}

async function scale(args: string[]): Promise<void> {
  const files = Number(args.find((a) => a.startsWith('--files='))?.slice(8) ?? 100_000);
  const dirs = Number(args.find((a) => a.startsWith('--dirs='))?.slice(7) ?? 10_000);
  const root = `/var/tmp/bridge-fat32-bench/tree-${files}-${dirs}`;
  await makeTree(root, files, dirs, false, 7);
  const work = mkdtempSync(join(tmpdir(), 'bridge-fat32-scale-'));
  const mnt = join(work, 'mnt');
  try {
    const ours = await startOurs(root, { mnt });
    const builtRss = await peakRss(ours.child.pid!);
    const img = join(mnt, 'disk.img');
    const size = (await fsp.stat(img)).size;
    const loop = (await execFileP('losetup', ['-f', '--show', '-r', '-o', String(MIB), '--sizelimit', String(size - MIB), img])).stdout.trim();
    let fsck = '';
    const t = process.hrtime.bigint();
    try {
      fsck = await execFileP('fsck.fat', ['-n', loop]).then(
        (r) => r.stdout + r.stderr,
        (e: { stdout?: string; stderr?: string }) => `FAILED\n${e.stdout ?? ''}${e.stderr ?? ''}`,
      );
    } finally {
      await execFileP('losetup', ['-d', loop]);
    }
    const fsckS = Number(process.hrtime.bigint() - t) / 1e9;
    const servedRss = await peakRss(ours.child.pid!);
    await stop(ours.child);
    say(`\nFAT32 scale: ${files} files in ${dirs} directories`);
    say(
      `ready in ${ours.readyS.toFixed(2)} s; disk ${(size / MIB).toFixed(0)} MiB; peak RSS after build ${(builtRss / MIB).toFixed(1)} MiB, after fsck.fat read all metadata ${(servedRss / MIB).toFixed(1)} MiB`,
    );
    say(`fsck.fat -n over FUSE + loop: ${fsckS.toFixed(2)} s: ${fsck.trim().split('\n').slice(-1)[0]}`);
  } finally {
    await execFileP('fusermount', ['-uz', mnt]).catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  }
}

export async function run(args: string[]): Promise<void> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run "npm run build" first`);
  if (args.includes('--scale')) await scale(args);
  else await compare(args);
}
