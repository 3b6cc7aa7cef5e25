/**
 * The tree conformance suite: every Tree implementation (a plain directory, a kernel mount of a
 * block device's filesystem, later FUSE trees) behaves as a POSIX directory that exports can serve.
 * Checks are plain functions (see block-device.ts for why).
 */
import { promises as fsp } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { describe, expect, it as vitestIt } from 'vitest';
import type { Tree } from '../../appliance/src/tree/tree.js';
import { Rng } from '../helpers/random.js';

export interface TreeTarget {
  open(): Promise<Tree>;
  cleanup?(): Promise<void>;
  /** The tree refuses writes itself (a read-only mount), not just by flag. */
  enforcesReadOnly?: boolean;
  /** Whether the filesystem keeps names case-sensitively (FAT does not). */
  caseSensitive?: boolean;
}

async function expectErrno(p: Promise<unknown>, codes: string[]): Promise<void> {
  const err = await p.then(
    () => null,
    (e: NodeJS.ErrnoException) => e,
  );
  expect(err, `expected one of ${codes.join(', ')}`).not.toBeNull();
  expect(codes).toContain(err!.code);
}

export function treeChecks(target: TreeTarget): Record<string, () => Promise<void>> {
  const checks: Record<string, () => Promise<void>> = {};
  const it = (name: string, fn: (tree: Tree) => Promise<void>): void => {
    checks[name] = async () => {
      const tree = await target.open();
      try {
        await fn(tree);
      } finally {
        await tree.close();
        await target.cleanup?.();
      }
    };
  };

  it('is an absolute directory path', async (tree) => {
    expect(isAbsolute(tree.path)).toBe(true);
    expect((await fsp.stat(tree.path)).isDirectory()).toBe(true);
  });

  it('reads and writes files at unaligned offsets, with truncate and extend', async (tree) => {
    if (tree.readOnly) return;
    const rng = new Rng(7);
    const f = join(tree.path, 'data.bin');
    const model = rng.bytes(300_001);
    await fsp.writeFile(f, model);
    const fh = await fsp.open(f, 'r+');
    try {
      for (let i = 0; i < 50; i++) {
        const off = rng.int(0, model.length - 1);
        const piece = rng.bytes(rng.int(1, Math.min(70_000, model.length - off)));
        await fh.write(piece, 0, piece.length, off);
        piece.copy(model, off);
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    expect((await fsp.readFile(f)).equals(model)).toBe(true);
    await fsp.truncate(f, 1000);
    expect((await fsp.readFile(f)).equals(model.subarray(0, 1000))).toBe(true);
    await fsp.truncate(f, 5000);
    const grown = await fsp.readFile(f);
    expect(grown.length).toBe(5000);
    expect(grown.subarray(1000).every((b) => b === 0)).toBe(true);
    await fsp.writeFile(join(tree.path, 'empty'), '');
    expect((await fsp.stat(join(tree.path, 'empty'))).size).toBe(0);
  });

  it('creates, lists, renames and removes files and directories', async (tree) => {
    if (tree.readOnly) return;
    const d = join(tree.path, 'a', 'b', 'c');
    await fsp.mkdir(d, { recursive: true });
    await fsp.writeFile(join(d, 'f.txt'), 'hello');
    await fsp.mkdir(join(tree.path, 'other'));
    await fsp.rename(join(d, 'f.txt'), join(d, 'g.txt'));
    await fsp.rename(join(d, 'g.txt'), join(tree.path, 'other', 'moved.txt'));
    expect(await fsp.readFile(join(tree.path, 'other', 'moved.txt'), 'utf8')).toBe('hello');
    await fsp.rename(join(tree.path, 'a', 'b'), join(tree.path, 'other', 'b2'));
    expect((await fsp.readdir(join(tree.path, 'other'))).sort()).toEqual(['b2', 'moved.txt']);
    expect(await fsp.readdir(join(tree.path, 'other', 'b2'))).toEqual(['c']);
    await fsp.unlink(join(tree.path, 'other', 'moved.txt'));
    await expectErrno(fsp.rmdir(join(tree.path, 'other')), ['ENOTEMPTY', 'EEXIST']);
    await fsp.rm(join(tree.path, 'other'), { recursive: true });
    await fsp.rmdir(join(tree.path, 'a'));
    expect((await fsp.readdir(tree.path)).filter((n) => n !== 'lost+found')).toEqual([]);
  });

  it('keeps Unicode and 255-byte names', async (tree) => {
    if (tree.readOnly) return;
    const names = ['Ünïcødé — 名前.txt', 'emoji 🎉.md', 'x'.repeat(251) + '.bin', 'spaces and.dots.tar.gz'];
    for (const n of names) await fsp.writeFile(join(tree.path, n), n);
    const listed = await fsp.readdir(tree.path);
    for (const n of names) {
      expect(listed).toContain(n);
      expect(await fsp.readFile(join(tree.path, n), 'utf8')).toBe(n);
    }
    await expectErrno(fsp.writeFile(join(tree.path, 'y'.repeat(256)), ''), ['ENAMETOOLONG']);
    if (target.caseSensitive !== false) {
      await fsp.writeFile(join(tree.path, 'Case'), '1');
      await fsp.writeFile(join(tree.path, 'case'), '2');
      expect(await fsp.readFile(join(tree.path, 'Case'), 'utf8')).toBe('1');
    }
  });

  it('keeps modification times', async (tree) => {
    if (tree.readOnly) return;
    const f = join(tree.path, 'dated');
    await fsp.writeFile(f, 'x');
    const when = new Date('2021-03-04T05:06:08Z');
    await fsp.utimes(f, when, when);
    expect((await fsp.stat(f)).mtime.getTime()).toBe(when.getTime());
  });

  it('refuses writes when read-only', async (tree) => {
    if (!tree.readOnly || !target.enforcesReadOnly) return;
    await expectErrno(fsp.writeFile(join(tree.path, 'nope'), 'x'), ['EROFS', 'EACCES', 'EPERM']);
    await expectErrno(fsp.mkdir(join(tree.path, 'nope-dir')), ['EROFS', 'EACCES', 'EPERM']);
  });

  return checks;
}

export function treeConformance(name: string, target: TreeTarget): void {
  describe(`Tree conformance: ${name}`, () => {
    for (const [check, fn] of Object.entries(treeChecks(target))) vitestIt(check, fn);
  });
}
