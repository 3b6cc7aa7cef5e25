/**
 * `bridge-agent fat32 serve` end to end through FUSE: the built CLI serves MNT/disk.img, mtools
 * and fsck.fat (on a loop device over the FUSE file) read it, the report file and `fat32 report`
 * list what was left out, and SIGTERM unmounts. Needs `npm run build` first (CI does it).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, promises as fsp, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectVolumeHolds, fsckPartition, fsckProblems, makeMixedTree, mtools, run, type MixedTree } from './helpers.js';

const CLI = resolve(import.meta.dirname, '../../dist/appliance/src/cli.js');
const MIB = 1024 * 1024;

async function mountedAt(path: string): Promise<boolean> {
  return (await fsp.readFile('/proc/self/mountinfo', 'utf8')).split('\n').some((l) => l.split(' ')[4] === path);
}

describe('bridge-agent fat32 serve (FUSE)', () => {
  let dir = '';
  let src = '';
  let mnt = '';
  let child: ChildProcess | undefined;
  let exited: Promise<number | null>;
  let ready: { file: string; size: number; writable: boolean; report: { leftOut: { path: string; reason: string }[] } };
  let tree: MixedTree;

  beforeAll(async () => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run "npm run build" first`);
    dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-serve-'));
    src = join(dir, 'src');
    mnt = join(dir, 'mnt');
    await fsp.mkdir(src);
    tree = await makeMixedTree(src, 2048, 99);
    child = spawn(
      process.execPath,
      [CLI, 'fat32', 'serve', '--source', src, '--read-only', '--size', '256M', '--label', 'served', '--json', '--report-file', join(dir, 'report.json'), mnt],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const c = child;
    exited = new Promise((res) => c.on('exit', (code) => res(code)));
    let out = '';
    let err = '';
    c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    ready = await new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`fat32 serve not ready in 30 s:\n${err}`)), 30_000);
      c.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        try {
          const v = JSON.parse(out) as typeof ready;
          clearTimeout(timer);
          res(v);
        } catch {
          /* not complete yet */
        }
      });
      void exited.then((code) => rej(new Error(`fat32 serve exited with ${code}:\n${err}`)));
    });
  });

  afterAll(async () => {
    if (child && child.exitCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
    if (mnt && (await mountedAt(mnt))) await run('fusermount', ['-uz', mnt]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('prints the served file and the report once ready', () => {
    expect(ready.file).toBe(join(mnt, 'disk.img'));
    expect(ready.size).toBe(256 * MIB);
    expect(ready.writable).toBe(false);
    expect(ready.report.leftOut.map((l) => l.path).sort()).toEqual([...tree.leftOut.keys()].sort());
    const onDisk = JSON.parse(readFileSync(join(dir, 'report.json'), 'utf8')) as typeof ready.report;
    expect(onDisk.leftOut).toEqual(ready.report.leftOut);
  });

  it('reads back every file through the FUSE file with mtools, and fsck.fat finds nothing', async () => {
    const img = join(mnt, 'disk.img');
    await expectVolumeHolds(img, join(dir, 'out'), tree);
    const label = await mtools('mlabel', ['-s', '-i', `${img}@@1M`, '::']);
    expect(label.stdout).toContain('SERVED');
    const f = await fsckPartition(img, 255 * MIB);
    expect(fsckProblems(f.output), f.output).toEqual([]);
    expect(f.code).toBe(0);
  });

  it('refuses writes to the served file', async () => {
    await expect(fsp.open(join(mnt, 'disk.img'), 'r+')).rejects.toMatchObject({ code: expect.stringMatching(/EROFS|EACCES/) });
  });

  it('`fat32 report --json` prints the same left-out list without serving', async () => {
    const r = await run(process.execPath, [CLI, 'fat32', 'report', '--source', src, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as { leftOut: { path: string }[]; renamed: { path: string; name: string }[] };
    expect(rep.leftOut.map((l) => l.path).sort()).toEqual([...tree.leftOut.keys()].sort());
    expect(rep.renamed.length).toBe(tree.renamed.size);
  });

  it('unmounts and exits 0 on SIGTERM', async () => {
    child!.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(await mountedAt(mnt)).toBe(false);
  });
});
