/**
 * Reads file data from the source on demand, through a small cache of open descriptors, and keeps
 * the change rule: a file whose size, modification time or inode differs from the snapshot is never
 * served. Every read is checked after the data arrives (fstat on the same descriptor), so a file
 * rewritten during the read cannot hand out torn bytes: the read fails with EIO and the file is
 * recorded as changed. Unchanged files keep being served.
 *
 * Two I/O modes. 'sync' (default) uses synchronous system calls: a page-cache hit costs a few
 * microseconds instead of two thread-pool hops, which is what makes whole-device reads through FUSE
 * fast (docs/fat32.md has the figures); a cold read blocks the event loop for one disk read of at
 * most a FUSE request (128 KiB). 'async' goes through libuv's thread pool, for slow or remote sources.
 */
import { close, closeSync, fstat, fstatSync, open, openSync, read, readSync, constants as fsc, type Stats } from 'node:fs';
import { promisify } from 'node:util';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';

const openAsync = promisify(open);
const readAsync = promisify(read);
const fstatAsync = promisify(fstat);
const closeAsync = promisify(close);

export type SourceIoMode = 'sync' | 'async';

export interface SourceFileIdentity {
  path: string;
  size: number;
  mtimeMs: number;
  ino: number;
}

interface Slot {
  fd: number;
  /** Reads in flight on this descriptor: it is closed only when none are. */
  refs: number;
  closed: boolean;
}

const OPEN_FLAGS = fsc.O_RDONLY | fsc.O_NOFOLLOW;

export class SourceFiles {
  /** Open descriptors by entry index, least recently used first (Map keeps insertion order). */
  private readonly slots = new Map<number, Slot>();
  private readonly opening = new Map<number, Promise<Slot>>();
  /** Entries whose source changed since the snapshot: reads of them fail. */
  readonly changed = new Map<number, string>();

  constructor(
    private readonly identity: (entry: number) => SourceFileIdentity,
    private readonly log: Logger,
    private readonly mode: SourceIoMode = 'sync',
    private readonly maxOpen = 64,
  ) {}

  /**
   * Fills `target` with the file's bytes at `position`; the caller keeps `position + target.length <= size`.
   * The data is read on libuv's pool, so large copies run beside the event loop; in 'sync' mode the
   * descriptor is still opened synchronously (cheap, and no second pool hop).
   */
  async read(entry: number, target: Uint8Array, position: number): Promise<void> {
    if (this.changed.has(entry)) throw this.changedError(entry);
    const slot = this.mode === 'sync' ? this.acquireSync(entry) : await this.acquireAsync(entry);
    let done = 0;
    try {
      while (done < target.length) {
        const { bytesRead } = await readAsync(slot.fd, target, done, target.length - done, position + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      this.verify(entry, slot.fd, done < target.length);
    } finally {
      this.release(entry, slot);
    }
  }

  readSync(entry: number, target: Uint8Array, position: number): void {
    if (this.changed.has(entry)) throw this.changedError(entry);
    const slot = this.acquireSync(entry);
    let done = 0;
    try {
      while (done < target.length) {
        const n = readSync(slot.fd, target, done, target.length - done, position + done);
        if (n === 0) break;
        done += n;
      }
      this.verify(entry, slot.fd, done < target.length);
    } finally {
      this.release(entry, slot);
    }
  }

  /**
   * The write-back changed or removed this entry's source file: close its cached descriptor (reads
   * open the file again, by its current identity) and clear its change mark.
   */
  forget(entry: number): void {
    this.changed.delete(entry);
    const slot = this.slots.get(entry);
    if (!slot) return;
    this.slots.delete(entry);
    if (slot.refs === 0) this.closeFd(slot);
  }

  /** Closes every cached descriptor. */
  async close(): Promise<void> {
    await Promise.all([...this.opening.values()].map((p) => p.catch(() => undefined)));
    for (const slot of this.slots.values()) if (!slot.closed) closeSync(slot.fd);
    this.slots.clear();
  }

  /** After a read: fails the read (EIO) if the file is not the snapshot's any more. */
  private verify(entry: number, fd: number, short: boolean): void {
    // fstat of an open descriptor does not touch the disk: cheap enough to run synchronously.
    const problem = short ? 'file is shorter than in the snapshot' : this.difference(entry, fstatSync(fd));
    if (problem) {
      this.markChanged(entry, problem);
      throw this.changedError(entry);
    }
  }

  private changedError(entry: number): BridgeError {
    const id = this.identity(entry);
    return new BridgeError('EIO', `source file ${id.path} changed after the FAT32 snapshot: ${this.changed.get(entry)}`, { path: id.path });
  }

  private difference(entry: number, st: Stats): string | undefined {
    const id = this.identity(entry);
    if (st.ino !== id.ino) return 'replaced by another file';
    if (st.size !== id.size) return `size ${id.size} became ${st.size}`;
    if (st.mtimeMs !== id.mtimeMs) return 'modified';
    return undefined;
  }

  private markChanged(entry: number, detail: string): void {
    if (this.changed.has(entry)) return;
    this.changed.set(entry, detail);
    this.log.warn('source file changed after the snapshot; its data is no longer served', { path: this.identity(entry).path, detail });
  }

  private openFailed(entry: number, e: unknown): BridgeError {
    const id = this.identity(entry);
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ELOOP') {
      this.markChanged(entry, code === 'ENOENT' ? 'deleted' : 'replaced by a symbolic link');
      return this.changedError(entry);
    }
    this.log.warn('cannot open source file', { path: id.path, error: errorMessage(e) });
    return new BridgeError('EIO', `cannot open source file ${id.path}: ${errorMessage(e)}`, {}, { cause: e });
  }

  private openSyncOrFail(entry: number): number {
    try {
      return openSync(this.identity(entry).path, OPEN_FLAGS);
    } catch (e) {
      throw this.openFailed(entry, e);
    }
  }

  /** A freshly opened descriptor must still be the snapshot's file. */
  private checkOpened(entry: number, fd: number, stat: (fd: number) => Stats): number {
    const problem = this.difference(entry, stat(fd));
    if (problem) {
      closeSync(fd);
      this.markChanged(entry, problem);
      throw this.changedError(entry);
    }
    return fd;
  }

  /**
   * The entry's descriptor, opened synchronously when not cached. No fstat at open: every read is
   * followed by one (verify), which catches a replaced file just as well, at half the system calls.
   */
  private acquireSync(entry: number): Slot {
    let slot = this.slots.get(entry);
    if (slot) this.touch(entry, slot);
    else slot = this.insert(entry, this.openSyncOrFail(entry));
    slot.refs++;
    return slot;
  }

  private async acquireAsync(entry: number): Promise<Slot> {
    const cached = this.slots.get(entry);
    if (cached) {
      this.touch(entry, cached);
      cached.refs++;
      return cached;
    }
    let p = this.opening.get(entry);
    if (!p) {
      p = (async () => {
        let fd: number;
        try {
          fd = await openAsync(this.identity(entry).path, OPEN_FLAGS);
        } catch (e) {
          throw this.openFailed(entry, e);
        }
        const st = await fstatAsync(fd);
        return this.insert(
          entry,
          this.checkOpened(entry, fd, () => st),
        );
      })().finally(() => this.opening.delete(entry));
      this.opening.set(entry, p);
    }
    const slot = await p;
    // Evicted (and closed) between its opening and this waiter's turn: open again.
    if (slot.closed) return this.acquireAsync(entry);
    slot.refs++;
    return slot;
  }

  private insert(entry: number, fd: number): Slot {
    const slot = { fd, refs: 0, closed: false };
    this.slots.set(entry, slot);
    this.evict();
    return slot;
  }

  private touch(entry: number, slot: Slot): void {
    this.slots.delete(entry);
    this.slots.set(entry, slot);
  }

  private release(entry: number, slot: Slot): void {
    slot.refs--;
    if (slot.refs === 0 && this.slots.get(entry) !== slot) this.closeFd(slot);
  }

  private evict(): void {
    if (this.slots.size <= this.maxOpen) return;
    for (const [entry, slot] of this.slots) {
      if (this.slots.size <= this.maxOpen) break;
      this.slots.delete(entry);
      // A descriptor with reads in flight is closed by the last of them (release).
      if (slot.refs === 0) this.closeFd(slot);
    }
  }

  private closeFd(slot: Slot): void {
    if (slot.closed) return;
    slot.closed = true;
    if (this.mode === 'sync') closeSync(slot.fd);
    else void closeAsync(slot.fd).catch(() => undefined);
  }
}
