/**
 * `npm run bench -- fat32 [--scale]`
 *
 * Default: our synthesized FAT32 disk beside nbdkit's floppy plugin on the same tree (20,000 files
 * in 100 directories plus one 512 MiB file, generated once under /var/tmp and reused): time from
 * start until the first sector can be read, whole-device sequential read time (nbdcopy for both,
 * and dd bs=1M for ours), peak RSS of the serving process. Our disk gets the same size as nbdkit's
 * so that both reads move the same number of bytes.
 *
 * --scale: 100,000 files in 10,000 directories: time to build, peak RSS and heap of the serving
 * process, and fsck.fat over the FUSE file through a loop device.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, openSync, closeSync, writeSync, promises as fsp, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { Rng } from '../helpers/random.js';

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

/** Resolves when an NBD server on the socket sends its greeting. */
function nbdGreets(sock: string): Promise<true | undefined> {
  return new Promise((res) => {
    const s = connect(sock);
    s.once('data', () => {
      s.destroy();
      res(true);
    });
    s.once('error', () => res(undefined));
  });
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

/**
 * The fat32 command registered alone on a bare commander program: what `bridge-agent fat32 serve`
 * would cost if cli.ts loaded the other commands' modules (S3 client, zod, ...) only when used.
 */
const LONE_COMMAND = `import { Command } from 'commander';
import { register } from ${JSON.stringify(resolve(import.meta.dirname, '../../dist/appliance/src/commands/fat32.js'))};
const p = new Command('bridge-agent');
register(p);
await p.parseAsync(process.argv.slice(1), { from: 'user' });`;

async function startOurs(source: string, mnt: string, size?: number, lone = false): Promise<{ child: ChildProcess; readyS: number }> {
  const t0 = process.hrtime.bigint();
  const cmd = ['fat32', 'serve', '--source', source, ...(size ? ['--size', String(size)] : []), mnt];
  const args = lone ? ['--input-type=module', '-e', LONE_COMMAND, ...cmd] : [CLI, '--log-level', 'warn', ...cmd];
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'ignore', 'inherit'],
    cwd: resolve(import.meta.dirname, '../..'),
    env: { ...process.env, BRIDGE_LOG_LEVEL: 'warn' },
  });
  await waitFor(() => firstSectorReadable(join(mnt, 'disk.img')), 120_000, 'bridge fat32');
  return { child, readyS: Number(process.hrtime.bigint() - t0) / 1e9 };
}

async function compare(args: string[]): Promise<void> {
  const root = args.find((a) => a.startsWith('--dir='))?.slice(6) ?? '/var/tmp/bridge-fat32-bench/tree-20k';
  await makeTree(root, 20_000, 100, true, 20261122);
  const work = mkdtempSync(join(tmpdir(), 'bridge-fat32-bench-'));
  const sock = join(work, 'nbd.sock');
  const mnt = join(work, 'mnt');
  // Warm the page cache of the source so neither side pays for the first touch.
  await execFileP('sh', ['-c', `cat ${JSON.stringify(root)}/big.bin > /dev/null; find ${JSON.stringify(root)} -type f -exec cat {} + > /dev/null`]);
  try {
    // nbdkit floppy
    const t0 = process.hrtime.bigint();
    const nbd = spawn('nbdkit', ['-f', '-U', sock, '--exit-with-parent', 'floppy', root], { stdio: ['ignore', 'ignore', 'inherit'] });
    await waitFor(() => nbdGreets(sock), 120_000, 'nbdkit');
    const nbdReady = Number(process.hrtime.bigint() - t0) / 1e9;
    const nbdSize = Number((await execFileP('nbdinfo', ['--size', `nbd+unix:///?socket=${sock}`])).stdout.trim());
    const nbdRead = await timed('nbdcopy', [`nbd+unix:///?socket=${sock}`, 'null:']);
    const nbdRss = await peakRss(nbd.pid!);
    await stop(nbd);

    // ours, same disk size as nbdkit's
    const ours = await startOurs(root, mnt, nbdSize);
    const ourRead = await timed('nbdcopy', [join(mnt, 'disk.img'), 'null:']);
    const ourRss = await peakRss(ours.child.pid!);
    await stop(ours.child);
    // dd through a fresh mount (the kernel caches the FUSE file's pages between opens).
    const again = await startOurs(root, mnt, nbdSize);
    const ddRead = await timed('dd', [`if=${join(mnt, 'disk.img')}`, 'of=/dev/null', 'bs=1M']);
    const ddRss = await peakRss(again.child.pid!);
    await stop(again.child);
    // ours with the default size (tree + headroom), ready time only
    const dflt = await startOurs(root, mnt);
    await stop(dflt.child);
    // the fat32 command without the rest of the CLI's modules
    const lone = await startOurs(root, mnt, nbdSize, true);
    await stop(lone.child);
    // in-process: scan + layout only
    const { buildFat32Volume } = await import('../../appliance/src/fat32/index.js');
    const { configureLogger } = await import('../../shared/src/logger.js');
    configureLogger({ level: 'warn' });
    const tb = process.hrtime.bigint();
    const vol = await buildFat32Volume(root, { size: nbdSize });
    const buildS = Number(process.hrtime.bigint() - tb) / 1e9;
    await vol.close();
    // the FUSE file's own ceiling: a memory device of the same size read the same way
    const mem = spawn(process.execPath, [CLI, '--log-level', 'warn', 'expose', '--device', `memory:${nbdSize}`, mnt], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    await waitFor(() => fsp.stat(join(mnt, 'disk.img')).then((st) => (st.size === nbdSize ? true : undefined)), 60_000, 'memory device');
    const memRead = await timed('nbdcopy', [join(mnt, 'disk.img'), 'null:']);
    await stop(mem);

    const mbps = (bytes: number, s: number): string => `${(bytes / s / 1e6).toFixed(0)} MB/s`;
    say(`\nFAT32 synthesis: 20,000 files in 100 directories + 512 MiB file (${root})`);
    say(`                         ready (s)  whole-device read       size      peak RSS`);
    say(
      `nbdkit floppy            ${nbdReady.toFixed(3).padStart(8)}  ${nbdRead.toFixed(2)} s (${mbps(nbdSize, nbdRead)}, nbdcopy)  ${(nbdSize / MIB).toFixed(0)} MiB  ${(nbdRss / MIB).toFixed(1)} MiB`,
    );
    say(
      `bridge fat32 (FUSE)      ${ours.readyS.toFixed(3).padStart(8)}  ${ourRead.toFixed(2)} s (${mbps(nbdSize, ourRead)}, nbdcopy)  ${(nbdSize / MIB).toFixed(0)} MiB  ${(ourRss / MIB).toFixed(1)} MiB`,
    );
    say(
      `bridge fat32 (FUSE, dd)  ${again.readyS.toFixed(3).padStart(8)}  ${ddRead.toFixed(2)} s (${mbps(nbdSize, ddRead)}, dd bs=1M)  ${(nbdSize / MIB).toFixed(0)} MiB  ${(ddRss / MIB).toFixed(1)} MiB`,
    );
    say(`bridge fat32, default size: ready ${dflt.readyS.toFixed(3)} s`);
    say(`bridge fat32 command alone (no other CLI modules loaded): ready ${lone.readyS.toFixed(3)} s`);
    say(`in-process scan + layout of the tree: ${buildS.toFixed(3)} s`);
    say(`FUSE file ceiling (memory device, nbdcopy): ${memRead.toFixed(2)} s (${mbps(nbdSize, memRead)})`);
    say(
      `ratios: ready ${(ours.readyS / nbdReady).toFixed(2)}x nbdkit's time (goal <= 1); read throughput ${(nbdRead / ourRead).toFixed(2)}x nbdkit's (goal >= 0.8)`,
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
    const ours = await startOurs(root, mnt);
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
