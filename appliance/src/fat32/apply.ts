/**
 * The operations the write-back applies to the source tree, and how each one is applied. Every
 * operation is idempotent (applying it twice, or after a crash part-way through it, leaves the same
 * result), so a journaled plan can be replayed from its last recorded step:
 * - `rename` moves `from` to `to` when `from` exists; when it does not and `to` does, it was done;
 * - `unlink`/`rmdir` accept a missing path; `mkdir` accepts an existing directory;
 * - `write` copies bytes from the plan's blob file to a fixed offset; `truncate`, `times` and `mode`
 *   set absolute values.
 * Paths are absolute and checked against the source root and the journal directory before use: an
 * operation never touches anything outside them (names were checked when the plan was made; this is
 * the second line of defence, also for replayed plans).
 */
import { constants as fsc, promises as fsp } from 'node:fs';
import { dirname, resolve, sep } from 'node:path';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';

export type Op =
  | { op: 'rename'; from: string; to: string }
  | { op: 'unlink'; path: string }
  | { op: 'rmdir'; path: string }
  | { op: 'mkdir'; path: string }
  /** Copy `length` bytes at `blobOffset` of the plan's blob file to `offset` of `path`. */
  | { op: 'write'; path: string; offset: number; blobOffset: number; length: number }
  | { op: 'truncate'; path: string; size: number }
  | { op: 'times'; path: string; mtimeMs: number }
  | { op: 'mode'; path: string; readOnly: boolean };

export interface ApplyContext {
  sourceRoot: string;
  journalDir: string;
  /** The plan's blob file (data of `write` operations). */
  blob: string;
  /** Problems that do not stop the plan (a directory that is not empty, a file gone), for the report. */
  notes: string[];
  /** Paths whose data or directory entries changed: fsynced at the end of the plan. */
  touched: Set<string>;
}

/** Throws unless `path` is the source root's descendant or inside the journal directory. */
export function checkInside(path: string, ctx: ApplyContext): void {
  const p = resolve(path);
  const inside = (root: string): boolean => p.startsWith(resolve(root) + sep);
  if (p !== path || (!inside(ctx.sourceRoot) && !inside(ctx.journalDir))) {
    throw new BridgeError('EACCES', `write-back refused a path outside the source ${ctx.sourceRoot}: ${path}`);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await fsp.lstat(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

function code(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException).code;
}

export async function applyOp(o: Op, ctx: ApplyContext): Promise<void> {
  for (const p of o.op === 'rename' ? [o.from, o.to] : [o.path]) checkInside(p, ctx);
  switch (o.op) {
    case 'rename': {
      if (!(await exists(o.from))) {
        if (await exists(o.to)) return; // done before a crash
        ctx.notes.push(`${o.from} vanished before it could be moved to ${o.to}`);
        return;
      }
      await fsp.rename(o.from, o.to);
      ctx.touched.add(dirname(o.from));
      ctx.touched.add(dirname(o.to));
      return;
    }
    case 'unlink':
      try {
        await fsp.unlink(o.path);
        ctx.touched.add(dirname(o.path));
      } catch (e) {
        if (code(e) !== 'ENOENT') throw e;
      }
      return;
    case 'rmdir':
      try {
        await fsp.rmdir(o.path);
        ctx.touched.add(dirname(o.path));
      } catch (e) {
        if (code(e) === 'ENOENT') return;
        // Entries the volume never showed (left out: symlinks, special files, case conflicts) keep it.
        if (code(e) === 'ENOTEMPTY' || code(e) === 'EEXIST') {
          ctx.notes.push(`${o.path}: deleted on the volume but kept in the source: it holds entries the volume does not show`);
          return;
        }
        throw e;
      }
      return;
    case 'mkdir':
      try {
        await fsp.mkdir(o.path);
        ctx.touched.add(dirname(o.path));
      } catch (e) {
        if (code(e) !== 'EEXIST') throw e;
      }
      return;
    case 'write': {
      const src = await fsp.open(ctx.blob, fsc.O_RDONLY);
      let dst;
      try {
        dst = await fsp.open(o.path, fsc.O_WRONLY | fsc.O_NOFOLLOW);
      } catch (e) {
        await src.close();
        if (code(e) === 'ENOENT') {
          ctx.notes.push(`${o.path} vanished before its data could be written`);
          return;
        }
        throw e;
      }
      try {
        const chunk = Buffer.alloc(Math.min(o.length, 1024 * 1024));
        for (let done = 0; done < o.length;) {
          const n = Math.min(chunk.length, o.length - done);
          const { bytesRead } = await src.read(chunk, 0, n, o.blobOffset + done);
          if (bytesRead !== n) throw new BridgeError('EIO', `write-back blob ${ctx.blob} is shorter than its plan says`);
          await dst.write(chunk, 0, n, o.offset + done);
          done += n;
        }
      } finally {
        await src.close();
        await dst.close();
      }
      ctx.touched.add(o.path);
      return;
    }
    case 'truncate':
      try {
        await fsp.truncate(o.path, o.size);
        ctx.touched.add(o.path);
      } catch (e) {
        if (code(e) !== 'ENOENT') throw e;
      }
      return;
    case 'times':
      try {
        const t = new Date(o.mtimeMs);
        await fsp.lutimes(o.path, t, t);
      } catch (e) {
        if (code(e) !== 'ENOENT') throw e;
      }
      return;
    case 'mode':
      try {
        const st = await fsp.lstat(o.path);
        // Read-only clears every write bit; writable gives the owner back the write bit.
        const mode = o.readOnly ? st.mode & 0o7555 : (st.mode & 0o7777) | 0o200;
        if (st.isFile()) await fsp.chmod(o.path, mode);
      } catch (e) {
        if (code(e) !== 'ENOENT') throw e;
      }
      return;
  }
}

/** fsyncs files and directories the plan changed (best effort for paths that went away). */
export async function syncTouched(ctx: ApplyContext): Promise<void> {
  for (const p of ctx.touched) {
    let fh;
    try {
      fh = await fsp.open(p, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    } catch {
      continue;
    }
    try {
      await fh.sync();
    } catch (e) {
      // Some file systems refuse fsync on directories (EINVAL): their entries are as durable as they get.
      if (code(e) !== 'EINVAL') throw new BridgeError('EIO', `fsync of ${p} failed: ${errorMessage(e)}`, {}, { cause: e });
    } finally {
      await fh.close();
    }
  }
}
