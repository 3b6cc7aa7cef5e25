/**
 * Reads file data from the source on demand, through a small cache of open descriptors, and keeps
 * the change rule: a file whose size, modification time or inode differs from the snapshot is never
 * served. Every read is checked after the data arrives (fstat on the same descriptor), so a file
 * rewritten during the read cannot hand out torn bytes: the read fails with EIO and the file is
 * recorded as changed. Unchanged files keep being served.
 */
import { close, fstat, fstatSync, open, read, constants as fsc, type Stats } from 'node:fs';
import { promisify } from 'node:util';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';

const openAsync = promisify(open);
const readAsync = promisify(read);
const fstatAsync = promisify(fstat);
const closeAsync = promisify(close);

export interface SourceFileIdentity {
  path: string;
  size: number;
  mtimeMs: number;
  ino: number;
}

interface Slot {
  fd: Promise<number>;
  refs: number;
}

export class SourceFiles {
  /** Open descriptors by entry index, least recently used first (Map keeps insertion order). */
  private readonly slots = new Map<number, Slot>();
  /** Entries whose source changed since the snapshot: reads of them fail. */
  readonly changed = new Map<number, string>();

  constructor(
    private readonly identity: (entry: number) => SourceFileIdentity,
    private readonly log: Logger,
    private readonly maxOpen = 64,
    private readonly onChange?: (entry: number, detail: string) => void,
  ) {}

  /** Fills `target` with the file's bytes at `position`; the caller keeps `position + target.length <= size`. */
  async read(entry: number, target: Uint8Array, position: number): Promise<void> {
    if (this.changed.has(entry)) throw this.changedError(entry);
    const slot = this.acquire(entry);
    try {
      const fd = await slot.fd;
      let done = 0;
      while (done < target.length) {
        const { bytesRead } = await readAsync(fd, target, done, target.length - done, position + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      // fstat of an open descriptor does not touch the disk: cheap enough to run synchronously.
      const problem = done < target.length ? 'file is shorter than in the snapshot' : this.difference(entry, fstatSync(fd));
      if (problem) this.markChanged(entry, problem);
    } finally {
      this.release(entry, slot);
    }
    if (this.changed.has(entry)) throw this.changedError(entry);
  }

  /** Closes every cached descriptor. */
  async close(): Promise<void> {
    const all = [...this.slots.values()];
    this.slots.clear();
    await Promise.all(all.map((s) => s.fd.then(closeAsync, () => undefined)));
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
    this.onChange?.(entry, detail);
  }

  private acquire(entry: number): Slot {
    let slot = this.slots.get(entry);
    if (slot) {
      this.slots.delete(entry); // re-insert as most recently used
    } else {
      slot = { fd: this.openChecked(entry), refs: 0 };
      slot.fd.catch(() => this.slots.get(entry) === slot && this.slots.delete(entry));
    }
    this.slots.set(entry, slot);
    slot.refs++;
    this.evict();
    return slot;
  }

  private release(entry: number, slot: Slot): void {
    slot.refs--;
    if (slot.refs === 0 && this.slots.get(entry) !== slot) void slot.fd.then(closeAsync, () => undefined);
    this.evict();
  }

  private evict(): void {
    if (this.slots.size <= this.maxOpen) return;
    for (const [entry, slot] of this.slots) {
      if (this.slots.size <= this.maxOpen) break;
      if (slot.refs > 0) continue;
      this.slots.delete(entry);
      void slot.fd.then(closeAsync, () => undefined);
    }
  }

  private async openChecked(entry: number): Promise<number> {
    const id = this.identity(entry);
    let fd: number;
    try {
      fd = await openAsync(id.path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ELOOP') this.markChanged(entry, code === 'ENOENT' ? 'deleted' : 'replaced by a symbolic link');
      else this.log.warn('cannot open source file', { path: id.path, error: errorMessage(e) });
      throw code === 'ENOENT' || code === 'ELOOP' ? this.changedError(entry) : new BridgeError('EIO', `cannot open source file ${id.path}: ${errorMessage(e)}`, {}, { cause: e });
    }
    const problem = this.difference(entry, await fstatAsync(fd));
    if (problem) {
      await closeAsync(fd);
      this.markChanged(entry, problem);
      throw this.changedError(entry);
    }
    return fd;
  }
}
