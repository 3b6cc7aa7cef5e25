/**
 * The store through its CLI and FUSE, as users run it: `store create|info|mount|stats|fsck`, kill -9
 * of a mount at several points (before, during and after uploads) with remount and compare, and a
 * real ext4 filesystem on top (mkfs, loop mount, copy a tree, remount the store cold, e2fsck, diff).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '../helpers/random.js';
import { REPO, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
let dir = '';
let store = '';
let passFile = '';
const mounts: Mounted[] = [];

interface Mounted {
  child: ChildProcess;
  mnt: string;
  file: string;
  stderr: string[];
}

function cli(args: string[], env: NodeJS.ProcessEnv = {}): { code: number; stdout: string; stderr: string } {
  try {
    const stdout = execFileSync(process.execPath, ['--import', 'tsx', 'appliance/src/cli.ts', ...args], {
      cwd: REPO,
      encoding: 'utf8',
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return { code: 0, stdout, stderr: '' };
  } catch (e) {
    const err = e as { status: number; stdout: string; stderr: string };
    return { code: err.status, stdout: err.stdout, stderr: err.stderr };
  }
}

async function mount(mnt: string, cacheDir: string, extra: string[] = []): Promise<Mounted> {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      'appliance/src/cli.ts',
      'store',
      'mount',
      '--store',
      store,
      '--passphrase-file',
      passFile,
      '--cache-dir',
      cacheDir,
      '--cache-size',
      '64M',
      '--json',
      ...extra,
      mnt,
    ],
    { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const m: Mounted = { child, mnt, file: join(mnt, 'disk.img'), stderr: [] };
  child.stderr!.on('data', (d: Buffer) => m.stderr.push(d.toString()));
  mounts.push(m);
  await new Promise<void>((res, rej) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('"file"')) res();
    });
    child.on('exit', (code) => rej(new Error(`store mount exited with ${code}: ${m.stderr.join('')}`)));
  });
  return m;
}

async function stop(m: Mounted, signal: 'SIGTERM' | 'SIGKILL'): Promise<void> {
  if (m.child.exitCode === null && m.child.signalCode === null) {
    const exited = new Promise((r) => m.child.once('exit', r));
    process.kill(m.child.pid!, signal);
    await exited;
  }
  if (signal === 'SIGKILL') {
    try {
      execFileSync('fusermount', ['-uz', m.mnt], { stdio: 'ignore' });
    } catch {
      /* not mounted */
    }
  }
  mounts.splice(mounts.indexOf(m), 1);
}

async function pwrite(file: string, pieces: { off: number; data: Buffer }[], sync: boolean): Promise<void> {
  const fh = await fsp.open(file, 'r+');
  try {
    for (const p of pieces) await fh.write(p.data, 0, p.data.length, p.off);
    if (sync) await fh.sync();
  } finally {
    await fh.close();
  }
}

async function pread(file: string, off: number, len: number): Promise<Buffer> {
  const fh = await fsp.open(file, 'r');
  try {
    const b = Buffer.alloc(len);
    await fh.read(b, 0, len, off);
    return b;
  } finally {
    await fh.close();
  }
}

beforeAll(() => {
  dir = tempDir('store-cli');
  store = `dir:${join(dir, 'store')}`;
  passFile = join(dir, 'pass');
  writeFileSync(passFile, 'a long passphrase for the cli tests\n');
});

afterAll(async () => {
  for (const m of [...mounts]) await stop(m, 'SIGKILL');
  for (const lo of ['lo', 'lo2']) {
    try {
      execFileSync('umount', [join(dir, lo)], { stdio: 'ignore' });
    } catch {
      /* not mounted */
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

describe('store CLI', () => {
  it('creates, describes, mounts with live stats, and checks a volume', async () => {
    const created = cli(['store', 'create', '--store', store, '--size', '256M', '--chunk-size', '128K', '--passphrase-file', passFile, '--json']);
    expect(created.code, created.stderr).toBe(0);
    const header = JSON.parse(created.stdout) as { volumeId: string; cipher: string };
    expect(header.cipher).toBe('aes-256-gcm');
    expect(JSON.stringify(header)).not.toContain('passphrase for the cli');
    const info = cli(['store', 'info', '--store', store, '--json']);
    expect(JSON.parse(info.stdout)).toMatchObject({ header: { volumeId: header.volumeId, size: 256 * MiB, chunkSize: 128 * 1024, compression: 'zstd' } });
    const again = cli(['store', 'create', '--store', store, '--size', '1M', '--encryption', 'none']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already exists/);
    const wrong = cli(['store', 'mount', '--store', store, join(dir, 'm0')], { BRIDGE_STORE_PASSPHRASE: 'nope' });
    expect(wrong.stderr).toMatch(/wrong passphrase/);

    const m = await mount(join(dir, 'mnt'), join(dir, 'cache'));
    const second = cli(['store', 'mount', '--store', store, '--passphrase-file', passFile, '--cache-dir', join(dir, 'cache2'), join(dir, 'm2')]);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/locked by pid \d+/);
    await pwrite(m.file, [{ off: 0, data: Buffer.alloc(4 * MiB, 'stats stats ') }], true);
    await new Promise((r) => setTimeout(r, 2500));
    const stats = JSON.parse(cli(['store', 'stats', '--store', store, '--cache-dir', join(dir, 'cache'), '--json']).stdout) as {
      storedObjects: number;
      compressionRatio: number;
      mounted?: { pid: number; dirtyBytes: number; uploadsInFlight: number; memoryHits: number };
    };
    expect(stats.mounted?.pid).toBe(m.child.pid);
    expect(stats.storedObjects).toBe(32);
    expect(stats.compressionRatio).toBeGreaterThan(10);
    await stop(m, 'SIGTERM');
    expect(m.stderr.join('')).not.toContain('passphrase for the cli');
    const fsck = cli(['store', 'fsck', '--store', store, '--passphrase-file', passFile, '--json']);
    expect(fsck.code, fsck.stderr).toBe(0);
    expect(JSON.parse(fsck.stdout)).toMatchObject({ checked: 32, bad: [] });
  });

  it('loses nothing acknowledged by fsync when the mount is killed with SIGKILL (before, during and after uploads)', async () => {
    const rng = new Rng(2026);
    const size = 256 * MiB;
    const unsafeFrom = size - 8 * MiB; // unflushed writes go here and are never compared
    const model = await pread((await mount(join(dir, 'mnt'), join(dir, 'cache'))).file, 0, unsafeFrom);
    await stop(mounts[mounts.length - 1]!, 'SIGTERM');
    let replays = 0;
    for (const [round, killAfterMs] of [0, 40, 400, 2500].entries()) {
      const m = await mount(join(dir, 'mnt'), join(dir, 'cache'), round === 0 ? [] : ['--break-lock']);
      if (m.stderr.join('').includes('replaying cache journal')) replays++;
      // Check what the previous round acknowledged, then write more.
      expect((await pread(m.file, 0, unsafeFrom)).equals(model), `after kill in round ${round - 1}`).toBe(true);
      const pieces = Array.from({ length: 24 }, () => {
        const len = rng.int(1, 3 * 128 * 1024);
        return { off: rng.int(0, unsafeFrom - len), data: rng.bytes(len) };
      });
      pieces.push({ off: round * 6 * MiB, data: rng.bytes(6 * MiB) }); // a burst of whole chunks: uploads in flight at kill
      await pwrite(m.file, pieces, true);
      for (const p of pieces) p.data.copy(model, p.off);
      await pwrite(m.file, [{ off: unsafeFrom + rng.int(0, MiB), data: rng.bytes(2 * MiB) }], false);
      await new Promise((r) => setTimeout(r, killAfterMs));
      await stop(m, 'SIGKILL');
    }
    const m = await mount(join(dir, 'mnt'), join(dir, 'cache'), ['--break-lock']);
    if (m.stderr.join('').includes('replaying cache journal')) replays++;
    // Kills right after fsync found acknowledged chunks only in the journal: the replay path ran.
    expect(replays).toBeGreaterThan(0);
    expect((await pread(m.file, 0, unsafeFrom)).equals(model)).toBe(true);
    await stop(m, 'SIGTERM');
    // A cold cache reads the same from the store alone.
    const cold = await mount(join(dir, 'mnt'), join(dir, 'cache-cold'));
    expect((await pread(cold.file, 0, unsafeFrom)).equals(model)).toBe(true);
    await stop(cold, 'SIGTERM');
  });

  it('carries a real ext4 filesystem: mkfs, loop mount, copy a tree, remount cold, e2fsck clean, tree identical', async () => {
    const tree = join(dir, 'tree');
    mkdirSync(join(tree, 'sub', 'deeper'), { recursive: true });
    const rng = new Rng(42);
    for (let i = 0; i < 60; i++) writeFileSync(join(tree, i % 3 ? 'sub' : 'sub/deeper', `f${i}.bin`), rng.bytes(rng.int(0, 600_000)));
    writeFileSync(join(tree, 'big.bin'), rng.bytes(12 * MiB));
    execFileSync('cp', ['-a', join(REPO, 'appliance', 'src'), join(tree, 'src')]);

    const m = await mount(join(dir, 'mnt'), join(dir, 'cache'), ['--break-lock']);
    execFileSync('mkfs.ext4', ['-q', '-F', m.file]);
    const lo = join(dir, 'lo');
    mkdirSync(lo, { recursive: true });
    execFileSync('mount', ['-o', 'loop', m.file, lo]);
    execFileSync('cp', ['-a', tree, join(lo, 'tree')]);
    execFileSync('umount', [lo]);
    await stop(m, 'SIGTERM');

    const again = await mount(join(dir, 'mnt'), join(dir, 'cache-ext4-cold'));
    const fsck = execFileSync('e2fsck', ['-fn', again.file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(fsck).toMatch(/clean|files/);
    execFileSync('mount', ['-o', 'loop,ro', again.file, lo]);
    try {
      execFileSync('diff', ['-r', tree, join(lo, 'tree')]);
    } finally {
      execFileSync('umount', [lo]);
    }
    await stop(again, 'SIGTERM');
  });

  it('grows a volume with store resize, refuses to shrink it or to resize it while mounted', async () => {
    const before = JSON.parse(cli(['store', 'info', '--store', store, '--json']).stdout) as { header: { size: number } };
    const shrink = cli(['store', 'resize', '--store', store, '--size', '128M', '--passphrase-file', passFile]);
    expect(shrink.code).toBe(1);
    expect(shrink.stderr).toMatch(/refusing to shrink volume .*only growing is supported/);
    const wrong = cli(['store', 'resize', '--store', store, '--size', '512M'], { BRIDGE_STORE_PASSPHRASE: 'nope' });
    expect(wrong.stderr).toMatch(/wrong passphrase/);
    const m = await mount(join(dir, 'mnt'), join(dir, 'cache-resize'));
    const busy = cli(['store', 'resize', '--store', store, '--size', '512M', '--passphrase-file', passFile]);
    expect(busy.code).toBe(1);
    expect(busy.stderr).toMatch(/locked by pid \d+/);
    const head = await pread(m.file, 0, 64 * 1024);
    await stop(m, 'SIGTERM');
    expect(JSON.parse(cli(['store', 'info', '--store', store, '--json']).stdout)).toMatchObject({ header: { size: before.header.size } });

    const grown = cli(['store', 'resize', '--store', store, '--size', '512M', '--passphrase-file', passFile, '--json']);
    expect(grown.code, grown.stderr).toBe(0);
    expect(JSON.parse(grown.stdout)).toMatchObject({ size: 512 * MiB });
    const again = await mount(join(dir, 'mnt'), join(dir, 'cache-resize'));
    expect((await fsp.stat(again.file)).size).toBe(512 * MiB);
    expect((await pread(again.file, 0, 64 * 1024)).equals(head)).toBe(true);
    // The new space reads as zeros and takes writes.
    expect((await pread(again.file, 512 * MiB - 4096, 4096)).every((b) => b === 0)).toBe(true);
    await pwrite(again.file, [{ off: 512 * MiB - 4096, data: Buffer.alloc(4096, 7) }], true);
    expect((await pread(again.file, 512 * MiB - 4096, 4096)).equals(Buffer.alloc(4096, 7))).toBe(true);
    await stop(again, 'SIGTERM');
  });
});
