/**
 * `npm run bench -- fat32-writeback [--files=N --dirs=M --ops=K]`
 *
 * What one mtools command costs when the FAT32 volume writes back into the source: a tree of 20,000
 * small files in 200 directories (generated once under /var/tmp, copied to a scratch source each
 * run) is served writable with the built CLI; K rounds of mcopy (a new 3 KB file), mren, mmd and
 * mdel run against MNT/disk.img (each command's close flushes: parse, diff, journal, apply) and the
 * same commands against a local copy of the disk image (the peer: mtools on a plain file, no
 * write-back). Prints the median and 90th percentile per command kind, both side by side, the
 * serving process's peak RSS and the load average.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, promises as fsp, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { Rng } from '../helpers/random.js';

const execFileP = promisify(execFile);
const CLI = resolve(import.meta.dirname, '../../dist/appliance/src/cli.js');

function say(line: string): void {
  process.stdout.write(line + '\n');
}

async function makeTree(root: string, files: number, dirs: number): Promise<void> {
  const marker = join(root, '.complete');
  if (existsSync(marker)) return;
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  say(`generating ${files} files in ${dirs} directories under ${root} (once)`);
  const rng = new Rng(5);
  for (let d = 0; d < dirs; d++) {
    const dir = join(root, `directory ${String(d).padStart(4, '0')}`);
    mkdirSync(dir);
    for (let f = 0; f < files / dirs; f++) writeFileSync(join(dir, `file-${String(f).padStart(6, '0')}.dat`), rng.bytes(rng.int(0, 3000)));
  }
  writeFileSync(marker, '');
}

async function peakRss(pid: number): Promise<number> {
  const status = await fsp.readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
}

async function timed(args: string[]): Promise<number> {
  const t0 = performance.now();
  await execFileP(args[0]!, args.slice(1), { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
  return performance.now() - t0;
}

function stats(ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number): number => s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
  return `median ${q(0.5).toFixed(1)} ms, p90 ${q(0.9).toFixed(1)} ms`;
}

export async function run(args: string[]): Promise<void> {
  const opt = (name: string, dflt: number): number => Number(args.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? dflt);
  const files = opt('files', 20_000);
  const dirs = opt('dirs', 200);
  const ops = opt('ops', 20);
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
  const tree = `/var/tmp/bridge-fat32-wb-bench-${files}-${dirs}`;
  await makeTree(tree, files, dirs);
  const work = mkdtempSync(join(tmpdir(), 'bridge-wb-bench-'));
  const src = join(work, 'src');
  const mnt = join(work, 'mnt');
  await execFileP('cp', ['-a', tree, src]);
  await fsp.rm(join(src, '.complete'));
  const small = join(work, 'small.bin');
  writeFileSync(small, new Rng(9).bytes(3000));
  const child = spawn(process.execPath, [CLI, 'fat32', 'serve', '--source', src, '--json', mnt], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  try {
    await new Promise<void>((res, rej) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('"report"')) res();
      });
      child.on('exit', (code) => rej(new Error(`serve exited ${code}: ${err}`)));
    });
    const local = join(work, 'local.img');
    await execFileP('cp', ['--sparse=always', join(mnt, 'disk.img'), local]);
    const served = `${mnt}/disk.img@@1M`;
    const plain = `${local}@@1M`;
    // The first write-back builds the applied view of the whole tree: timed apart.
    const first = await timed(['mcopy', '-i', served, small, '::/warmup.bin']);
    await timed(['mcopy', '-i', plain, small, '::/warmup.bin']);
    const kinds = ['mcopy', 'mren', 'mmd', 'mdel'] as const;
    const ours: Record<string, number[]> = {};
    const peer: Record<string, number[]> = {};
    for (let i = 0; i < ops; i++) {
      const d = `::/directory ${String((i * 37) % dirs).padStart(4, '0')}`;
      const cmds: Record<(typeof kinds)[number], (img: string) => string[]> = {
        mcopy: (img) => ['mcopy', '-i', img, small, `${d}/new file ${i}.bin`],
        mren: (img) => ['mren', '-i', img, `${d}/new file ${i}.bin`, `${d}/renamed file ${i}.bin`],
        mmd: (img) => ['mmd', '-i', img, `${d}/new directory ${i}`],
        mdel: (img) => ['mdel', '-i', img, `${d}/renamed file ${i}.bin`],
      };
      for (const k of kinds) {
        (ours[k] ??= []).push(await timed(cmds[k](served)));
        (peer[k] ??= []).push(await timed(cmds[k](plain)));
      }
    }
    const [l1, l5] = loadavg();
    say(`FAT32 write-back, one mtools command (its close flushes), ${files} files in ${dirs} directories, ${ops} of each:`);
    say(`  first write-back (builds the applied view): ${first.toFixed(0)} ms`);
    for (const k of kinds) say(`  ${k.padEnd(6)} ours (write-back over FUSE): ${stats(ours[k]!)}   |   mtools on a plain image: ${stats(peer[k]!)}`);
    say(
      `  peak RSS of the serving process: ${((await peakRss(child.pid!)) / 2 ** 20).toFixed(0)} MiB; load average ${l1!.toFixed(2)} / ${l5!.toFixed(2)} (1 / 5 min)`,
    );
    const check = await execFileP('diff', ['-rq', '-x', '.bridge-fat32', src, tree]).then(
      () => 'identical',
      (e: { stdout?: string }) => `${(e.stdout ?? '').split('\n').length - 1} differences`,
    );
    say(`  source vs the original tree afterwards (new directories expected): ${check}`);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    rmSync(work, { recursive: true, force: true });
  }
}
