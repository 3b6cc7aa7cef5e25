/**
 * Object backend on a local directory (`dir:PATH`): one file per object, keys' slashes as
 * subdirectories. A put is durable when it returns: the data goes to a temporary file that is
 * fdatasync'ed and renamed over the key, and the directory is fsync'ed so the rename survives a crash.
 * Directory fsyncs are shared by puts that arrive while one is running (group commit).
 *
 * A put is fsync-bound and runs many at once, so it keeps its CPU cost low: plain descriptors (the
 * callback API; FileHandle objects cost more per call), one descriptor kept open per directory for
 * its fsyncs, temporary names from a counter.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp, constants as fsc, close, fdatasync, fsync, open, readFile, rename, write } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { promisify } from 'node:util';
import { BridgeError } from '../../../shared/src/errors.js';
import { transientError, type ObjectBackend, type ObjectInfo } from './backend.js';

const TMP = '.tmp-';

const openFd = promisify(open);
const closeFd = promisify(close);
const fdatasyncFd = promisify(fdatasync);
const fsyncFd = promisify(fsync);
const renamePath = promisify(rename);
// The callback readFile runs open/fstat/read/close in C++ without a promise per step.
const readWhole = promisify(readFile) as (path: string) => Promise<Buffer>;
const writeFd = (fd: number, data: Uint8Array, off: number, pos: number): Promise<number> =>
  new Promise((res, rej) => write(fd, data, off, data.length - off, pos, (err, n) => (err ? rej(err) : res(n))));

export class DirBackend implements ObjectBackend {
  readonly location: string;
  private readonly knownDirs = new Set<string>();
  private readonly dirSyncs = new Map<string, { tail: Promise<void>; queued?: Promise<void> }>();
  /** Descriptors of directories, kept open for their fsyncs. */
  private readonly dirFds = new Map<string, Promise<number>>();
  /** Temporary names: unique within this process by counter, across processes by the token. */
  private readonly tmpToken = `${process.pid}-${randomBytes(4).toString('hex')}-`;
  private tmpSeq = 0;

  constructor(readonly root: string) {
    this.location = `dir:${root}`;
  }

  /** Opens an existing directory, or creates it with `create`. */
  static async open(root: string, create = false): Promise<DirBackend> {
    try {
      if (create) await fsp.mkdir(root, { recursive: true });
      const st = await fsp.stat(root);
      if (!st.isDirectory()) throw new BridgeError('EINVAL', `store ${root} is not a directory`);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new BridgeError('ENOENT', `store directory ${root} does not exist`, {}, { cause: e });
      throw e;
    }
    return new DirBackend(root);
  }

  private path(key: string): string {
    if (key.split('/').some((p) => p === '..' || p === '' || p.startsWith(TMP))) throw new BridgeError('EINVAL', `bad object key ${key}`);
    return join(this.root, ...key.split('/'));
  }

  async get(key: string): Promise<Buffer | undefined> {
    try {
      return await readWhole(this.path(key));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw wrap(`read ${key}`, e);
    }
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    const path = this.path(key);
    const dir = await this.ensureDir(dirname(path));
    const tmp = join(dir, TMP + this.tmpToken + (this.tmpSeq++).toString(36));
    try {
      const fd = await openFd(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      try {
        for (let done = 0; done < data.length;) done += await writeFd(fd, data, done, done);
        await fdatasyncFd(fd);
      } finally {
        await closeFd(fd);
      }
      await renamePath(tmp, path);
    } catch (e) {
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      throw wrap(`write ${key}`, e);
    }
    await this.syncDir(dir);
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    const path = this.path(key);
    const dir = await this.ensureDir(dirname(path));
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw wrap(`create ${key}`, e);
    }
    try {
      await fh.writeFile(data);
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await this.syncDir(dir);
    return true;
  }

  /** O_EXCL creates are atomic on a local filesystem. */
  async atomicCreate(): Promise<boolean> {
    return true;
  }

  async delete(key: string): Promise<void> {
    const path = this.path(key);
    try {
      await fsp.unlink(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw wrap(`delete ${key}`, e);
    }
    await this.syncDir(dirname(path));
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    // Walk the deepest directory the prefix names, then filter by the full prefix.
    const slash = prefix.lastIndexOf('/');
    const base = slash >= 0 ? join(this.root, ...prefix.slice(0, slash).split('/')) : this.root;
    const stack = [base];
    while (stack.length) {
      const dir = stack.pop()!;
      let names: import('node:fs').Dirent[];
      try {
        names = await fsp.readdir(dir, { withFileTypes: true });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw wrap(`list ${prefix}`, e);
      }
      for (const d of names) {
        if (d.name.startsWith(TMP)) continue;
        const full = join(dir, d.name);
        if (d.isDirectory()) stack.push(full);
        else if (d.isFile()) {
          const key = relative(this.root, full).split(sep).join('/');
          if (!key.startsWith(prefix)) continue;
          const st = await fsp.stat(full).catch(() => undefined);
          if (st) yield { key, size: st.size };
        }
      }
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.dirSyncs.values()].map((s) => s.tail.catch(() => undefined)));
    const fds = [...this.dirFds.values()];
    this.dirFds.clear();
    await Promise.all(fds.map((fd) => fd.then(closeFd).catch(() => undefined)));
  }

  private async ensureDir(dir: string): Promise<string> {
    if (!this.knownDirs.has(dir)) {
      const created = await fsp.mkdir(dir, { recursive: true });
      // A new directory's own entry in its parent must be durable too.
      if (created) await this.syncDir(dirname(dir));
      this.knownDirs.add(dir);
    }
    return dir;
  }

  /** fsync a directory; callers arriving before a queued fsync starts share it. */
  private syncDir(dir: string): Promise<void> {
    let st = this.dirSyncs.get(dir);
    if (!st) this.dirSyncs.set(dir, (st = { tail: Promise.resolve() }));
    if (st.queued) return st.queued;
    const s = st;
    const p = s.tail
      .catch(() => undefined)
      .then(() => {
        s.queued = undefined;
        return this.fsyncDir(dir);
      });
    s.queued = p;
    s.tail = p;
    return p;
  }

  private async fsyncDir(dir: string): Promise<void> {
    let fd = this.dirFds.get(dir);
    if (!fd) {
      fd = openFd(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
      this.dirFds.set(dir, fd);
      fd.catch(() => this.dirFds.delete(dir));
    }
    await fsyncFd(await fd);
  }
}

function wrap(what: string, e: unknown): BridgeError {
  if (e instanceof BridgeError) return e;
  const code = (e as NodeJS.ErrnoException).code;
  // Local disks fail for good on most errors; EAGAIN/EINTR/EBUSY are worth another try.
  if (code === 'EAGAIN' || code === 'EINTR' || code === 'EBUSY' || code === 'EMFILE') return transientError(`${what}: ${(e as Error).message}`, e);
  return new BridgeError('EIO', `${what}: ${(e as Error).message}`, {}, { cause: e });
}
