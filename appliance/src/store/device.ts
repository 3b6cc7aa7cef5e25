/**
 * The chunk store as a BlockDevice: splits byte ranges into chunk pieces and hands them to the cache
 * (in parallel), detects sequential reads for read-ahead, and owns the volume's lifecycle (header,
 * writer lock, journal). Built by openStore() in index.ts.
 */
import { BridgeError } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { checkIo, Lifecycle, type BlockCapabilities, type BlockDevice } from '../block/device.js';
import { HEADER_KEY, type ObjectBackend } from './backend.js';
import type { CacheStats, ChunkCache } from './cache.js';
import type { ChunkStore } from './chunks.js';
import { checkGrowth, encodeHeader, type VolumeHeader } from './header.js';
import type { StoreLock } from './lock.js';

export interface ChunkStoreStats extends CacheStats {
  volumeId: string;
  location: string;
  size: number;
  chunkSize: number;
  storedObjects: number;
  storedBytes: number;
  /** Logical bytes of the stored chunks divided by the bytes their objects take (≥ 1 is a saving). */
  compressionRatio: number;
  uploads: number;
  downloads: number;
}

export class ChunkStoreDevice implements BlockDevice {
  readonly blockSize: number;
  readonly capabilities: BlockCapabilities;
  private readonly life = new Lifecycle();
  private lastReadEnd = -1;

  constructor(
    private header: VolumeHeader,
    private readonly backend: ObjectBackend,
    private readonly store: ChunkStore,
    private readonly cache: ChunkCache,
    private readonly lock: StoreLock | undefined,
    readOnly: boolean,
    private readonly log: Logger,
    private readonly hooks: {
      /** After everything was uploaded, before the lock is released (manifest checkpoint). */
      beforeRelease?: () => Promise<void>;
      /** Always, last. */
      afterClose?: () => Promise<void>;
    } = {},
  ) {
    this.blockSize = Math.min(header.chunkSize, 128 * 1024);
    this.capabilities = { writable: !readOnly, trim: !readOnly, persistent: true, resizable: !readOnly };
  }

  get size(): number {
    return this.header.size;
  }

  get volumeId(): string {
    return this.header.volumeId;
  }

  get volumeHeader(): Readonly<VolumeHeader> {
    return this.header;
  }

  async read(target: Uint8Array, offset: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, target.length, false)) return;
    const cs = this.header.chunkSize;
    const sequential = offset === this.lastReadEnd;
    this.lastReadEnd = offset + target.length;
    await Promise.all(this.pieces(offset, target.length).map((p) => this.cache.read(p.index, target.subarray(p.bufOff, p.bufOff + p.len), p.chunkOff)));
    if (sequential && this.cache.readAhead > 0) {
      const next = Math.floor((offset + target.length - 1) / cs) + 1;
      const last = Math.min(Math.ceil(this.size / cs) - 1, next + this.cache.readAhead - 1);
      const want: number[] = [];
      for (let i = next; i <= last; i++) want.push(i);
      this.cache.prefetch(want);
    }
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    this.life.check();
    this.lock?.check();
    if (!checkIo(this, offset, data.length, true)) return;
    await Promise.all(this.pieces(offset, data.length).map((p) => this.cache.write(p.index, data.subarray(p.bufOff, p.bufOff + p.len), p.chunkOff)));
  }

  async flush(): Promise<void> {
    this.life.check();
    this.lock?.check();
    if (this.capabilities.writable) await this.cache.flush();
  }

  /** Uploads every dirty chunk to the store (stronger than flush, which may stop at the journal). */
  async drain(): Promise<void> {
    this.life.check();
    if (this.capabilities.writable) await this.cache.drain();
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.zero(offset, length);
  }

  async zero(offset: number, length: number): Promise<void> {
    this.life.check();
    this.lock?.check();
    if (!checkIo(this, offset, length, true)) return;
    const cs = this.header.chunkSize;
    const zeros = Buffer.alloc(Math.min(length, cs));
    await Promise.all(
      this.pieces(offset, length).map((p) =>
        p.len === cs || (p.chunkOff === 0 && p.index * cs + p.len >= this.size)
          ? this.cache.zeroChunk(p.index)
          : this.cache.write(p.index, zeros.subarray(0, p.len), p.chunkOff),
      ),
    );
  }

  /** Grows the volume (the header object is rewritten; chunks are unaffected). */
  async resize(newSize: number): Promise<void> {
    this.life.check();
    if (!this.capabilities.resizable) throw new BridgeError('EROFS', 'volume is open read-only');
    checkGrowth(this.header, newSize);
    if (newSize === this.size) return;
    const next = { ...this.header, size: newSize };
    await this.backend.put(HEADER_KEY, encodeHeader(next));
    this.header = next;
    this.log.info('volume grown', { volumeId: this.volumeId, size: newSize });
  }

  stats(): ChunkStoreStats {
    const c = this.cache.stats();
    const objects = this.store.stored.size;
    return {
      volumeId: this.volumeId,
      location: this.backend.location,
      size: this.size,
      chunkSize: this.header.chunkSize,
      ...c,
      storedObjects: objects,
      storedBytes: this.store.storedBytes,
      compressionRatio: this.store.storedBytes > 0 ? (objects * this.header.chunkSize) / this.store.storedBytes : 1,
      uploads: this.store.uploads,
      downloads: this.store.downloads,
    };
  }

  /** Changes the disk cache limit while open. */
  async setCacheLimit(bytes: number): Promise<void> {
    this.life.check();
    await this.cache.setLimit(bytes);
  }

  /** Flushes, uploads everything, releases the writer lock. If the store fails, data stays in the journal (EIO). */
  async close(): Promise<void> {
    if (!this.life.close()) return;
    try {
      await this.cache.close();
      await this.hooks.beforeRelease?.();
      await this.lock?.release();
    } finally {
      this.lock?.stop();
      await this.backend.close();
      await this.hooks.afterClose?.();
    }
  }

  private pieces(offset: number, length: number): { index: number; chunkOff: number; bufOff: number; len: number }[] {
    const cs = this.header.chunkSize;
    const out = [];
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const index = Math.floor(pos / cs);
      const chunkOff = pos - index * cs;
      const len = Math.min(cs - chunkOff, end - pos);
      out.push({ index, chunkOff, bufOff: pos - offset, len });
      pos += len;
    }
    return out;
  }
}
