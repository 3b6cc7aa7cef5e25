/**
 * Write-back, differential: a seeded random sequence of mtools commands (mcopy -o, mdel, mmd, mrd,
 * mren, mmove) runs against MNT/disk.img served by the built CLI, and the same changes are made to a
 * model directory with plain fs calls. mtools opens and closes the image for every command; the close
 * flushes the device, so after every command the source tree must equal the model. fsck.fat -n must
 * be clean at the end. 1,000 operations here; BRIDGE_BIG_TESTS=1 runs 5,000 on a larger tree.
 *
 * Names are ones mtools keeps exactly as given (they need a long-name entry: mixed case, spaces,
 * Unicode in the BMP, long; or are upper-case 8.3): mtools upper-cases lower-case 8.3 names.
 * Writes at an offset, appends and truncations are made the only way mtools can: the model's new
 * contents are copied over the file with `mcopy -o`.
 */
import { mkdtempSync, promises as fsp, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '../helpers/random.js';
import { fsckPartition, fsckProblems, mtools } from './helpers.js';
import { serve, stop, treeDiff, type Served } from './writeback-cli.js';

const BIG = process.env.BRIDGE_BIG_TESTS === '1';
const OPS = Number(process.env.BRIDGE_WB_OPS ?? (BIG ? 5000 : 1000));
const SEED = Number(process.env.BRIDGE_SEED ?? 20261122);

interface Model {
  files: Map<string, Buffer>;
  dirs: Set<string>; // '' is the root
}

const stems = ['Long name', 'ünïcödé', 'Ωμέγα-файл', 'CamelCase', 'x y z', '名前', 'data.backup', 'Été'];

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}

function children(m: Model, dir: string): string[] {
  const out: string[] = [];
  for (const p of [...m.files.keys(), ...m.dirs]) if (p !== '' && parentOf(p) === dir) out.push(p);
  return out;
}

describe('FAT32 write-back: mtools against a model', () => {
  let dir = '';
  let src = '';
  let model = '';
  let mnt = '';
  let scratch = '';
  let served: Served | undefined;
  const m: Model = { files: new Map(), dirs: new Set(['']) };
  const rng = new Rng(SEED);
  let serial = 0;

  /** A fresh name, unique ignoring case in `parent`, of a kind mtools keeps as given. */
  const freshName = (parent: string): string => {
    const taken = new Set(children(m, parent).map((p) => p.slice(p.lastIndexOf('/') + 1).toLowerCase()));
    for (;;) {
      const n = serial++;
      const kind = rng.int(0, 9);
      const name =
        kind === 0
          ? `UP${n}.TXT`
          : kind === 1
            ? `${'Very long name '.repeat(rng.int(2, 4))}${n}.dat`
            : `${rng.pick(stems)} ${n}${rng.pick(['.txt', '.bin', '', '.Data'])}`;
      if (!taken.has(name.toLowerCase())) return name;
    }
  };
  const size = (): number => rng.pick([0, 1, 100, 2047, 2048, 2049, rng.int(1, 20_000), rng.int(20_000, 200_000)]);
  const vol = (p: string): string => `::/${p}`;
  const img = (): string => `${mnt}/disk.img@@1M`;

  async function mt(cmd: string, args: string[]): Promise<void> {
    const r = await mtools(cmd, ['-i', img(), ...args]);
    if (r.code !== 0) {
      // To investigate: BRIDGE_WB_KEEP=path keeps a copy of the disk as the command found it.
      if (process.env.BRIDGE_WB_KEEP) await fsp.copyFile(`${mnt}/disk.img`, process.env.BRIDGE_WB_KEEP);
      throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
    }
  }

  async function putFile(p: string, data: Buffer): Promise<void> {
    const local = join(scratch, 'f');
    await fsp.writeFile(local, data);
    await mt('mcopy', ['-o', local, vol(p)]);
    await fsp.writeFile(join(model, p), data);
    m.files.set(p, data);
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-wb-'));
    src = join(dir, 'src');
    model = join(dir, 'model');
    mnt = join(dir, 'mnt');
    scratch = join(dir, 'scratch');
    for (const d of [src, model, scratch]) await fsp.mkdir(d);
    // The starting tree, made in both places.
    for (const d of ['Sub Dir', 'Sub Dir/Inner Ω', 'Empty Dir']) {
      await fsp.mkdir(join(src, d));
      await fsp.mkdir(join(model, d));
      m.dirs.add(d);
    }
    for (let i = 0; i < (BIG ? 60 : 12); i++) {
      const parent = rng.pick([...m.dirs]);
      const p = parent ? `${parent}/${freshName(parent)}` : freshName(parent);
      const data = rng.bytes(size());
      await fsp.writeFile(join(src, p), data);
      await fsp.writeFile(join(model, p), data);
      m.files.set(p, data);
    }
    served = await serve(src, mnt);
  }, 60_000);

  afterAll(async () => {
    await stop(served, mnt);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it(`applies ${OPS} seeded mtools operations exactly (seed ${SEED})`, { timeout: BIG ? 1_800_000 : 300_000 }, async () => {
    expect(served!.ready.writable).toBe(true);
    const counts: Record<string, number> = {};
    for (let op = 0; op < OPS; op++) {
      const files = [...m.files.keys()];
      const dirs = [...m.dirs];
      const kind = rng.pick(['create', 'create', 'rewrite', 'write-at', 'append', 'truncate', 'delete', 'mkdir', 'rmdir', 'rename', 'move', 'move-dir']);
      let did = kind;
      if (kind === 'create' || files.length === 0) {
        did = 'create';
        const parent = rng.pick(dirs);
        const p = parent ? `${parent}/${freshName(parent)}` : freshName(parent);
        await putFile(p, rng.bytes(size()));
      } else if (kind === 'rewrite' || kind === 'write-at' || kind === 'append' || kind === 'truncate') {
        const p = rng.pick(files);
        const old = m.files.get(p)!;
        let data: Buffer;
        if (kind === 'rewrite') data = rng.bytes(size());
        else if (kind === 'append') data = Buffer.concat([old, rng.bytes(rng.int(1, 5000))]);
        else if (kind === 'truncate') data = old.subarray(0, rng.int(0, old.length));
        else {
          const at = rng.int(0, old.length);
          const patch = rng.bytes(rng.int(1, 3000));
          data = Buffer.alloc(Math.max(old.length, at + patch.length));
          old.copy(data);
          patch.copy(data, at);
        }
        await putFile(p, data);
      } else if (kind === 'delete') {
        const p = rng.pick(files);
        await mt('mdel', [vol(p)]);
        await fsp.unlink(join(model, p));
        m.files.delete(p);
      } else if (kind === 'mkdir') {
        const parent = rng.pick(dirs);
        const p = parent ? `${parent}/${freshName(parent)}` : freshName(parent);
        await mt('mmd', [vol(p)]);
        await fsp.mkdir(join(model, p));
        m.dirs.add(p);
      } else if (kind === 'rmdir') {
        const empty = dirs.filter((d) => d !== '' && children(m, d).length === 0);
        if (empty.length === 0) continue;
        const p = rng.pick(empty);
        await mt('mrd', [vol(p)]);
        await fsp.rmdir(join(model, p));
        m.dirs.delete(p);
      } else if (kind === 'rename') {
        const p = rng.pick(files);
        const q = `${parentOf(p) ? parentOf(p) + '/' : ''}${freshName(parentOf(p))}`;
        await mt('mren', [vol(p), vol(q)]);
        await fsp.rename(join(model, p), join(model, q));
        m.files.set(q, m.files.get(p)!);
        m.files.delete(p);
      } else {
        // Move a file, or a directory with everything in it, into another directory under a new name.
        const movable = kind === 'move-dir' ? dirs.filter((d) => d !== '') : files;
        if (movable.length === 0) continue;
        const p = rng.pick(movable);
        const targets = dirs.filter((d) => d !== p && !d.startsWith(p + '/'));
        const to = rng.pick(targets);
        const q = `${to ? to + '/' : ''}${freshName(to)}`;
        await mt('mmove', [vol(p), vol(q)]);
        await fsp.rename(join(model, p), join(model, q));
        if (kind === 'move-dir') {
          const rebase = (x: string): string => (x === p || x.startsWith(p + '/') ? q + x.slice(p.length) : x);
          for (const f of [...m.files.keys()]) {
            const n = rebase(f);
            if (n !== f) {
              m.files.set(n, m.files.get(f)!);
              m.files.delete(f);
            }
          }
          for (const d of [...m.dirs]) {
            const n = rebase(d);
            if (n !== d) {
              m.dirs.delete(d);
              m.dirs.add(n);
            }
          }
        } else {
          m.files.set(q, m.files.get(p)!);
          m.files.delete(p);
        }
      }
      counts[did] = (counts[did] ?? 0) + 1;
      const diff = await treeDiff(src, model);
      if (diff.length)
        throw new Error(`after operation ${op} (${did}), the source differs from the model:\n${diff.join('\n')}\n${served!.stderr().slice(-3000)}`);
    }
    console.log(`write-back differential: ${OPS} operations`, counts);
    // The host's view reads back as the model too (moved and truncated original files are read from
    // their new places in the source, written clusters from the overlay).
    const out = join(dir, 'readback');
    await fsp.mkdir(out);
    const r = await mtools('mcopy', ['-s', '-i', img(), '::/*', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(await treeDiff(out, model)).toEqual([]);
    const fsck = await fsckPartition(`${mnt}/disk.img`, 255 * 1024 * 1024);
    expect(fsckProblems(fsck.output), fsck.output).toEqual([]);
    expect(fsck.code).toBe(0);
    expect(served!.stderr()).not.toMatch(/write-back suspended|held|failed/);
  });
});
