/**
 * Chunks in the object store: the codec over the backend, plus the map of which chunks exist (built
 * by one listing at open, kept current by every put and delete). Absent chunks read as zeros without
 * a request; writing an all-zero chunk deletes its object instead of storing it.
 */
import type { Logger } from '../../../shared/src/logger.js';
import { CHUNK_PREFIX, chunkIndexOf, chunkKey, type ObjectBackend } from './backend.js';
import type { Codec } from './codec-pool.js';

export class ChunkStore {
  /** index → stored object size. */
  readonly stored = new Map<number, number>();
  storedBytes = 0;
  uploads = 0;
  downloads = 0;
  /** Throws when this process may no longer change the store (writer lease lost). */
  guard: (() => void) | undefined;

  constructor(
    readonly backend: ObjectBackend,
    readonly codec: Codec,
    readonly chunkSize: number,
    private readonly log: Logger,
    readonly volumeId: string,
  ) {}

  /** Lists the stored chunks (once, at open). */
  async scan(): Promise<void> {
    this.stored.clear();
    this.storedBytes = 0;
    for await (const o of this.backend.list(CHUNK_PREFIX)) {
      const index = chunkIndexOf(o.key);
      if (index === undefined) continue;
      if (!this.stored.has(index)) this.storedBytes += o.size;
      this.stored.set(index, o.size);
    }
  }

  has(index: number): boolean {
    return this.stored.has(index);
  }

  /** A chunk's plaintext and its CRC-32, or null when it is not stored (all zeros). EIO naming the chunk if corrupt. */
  async get(index: number): Promise<{ plain: Buffer; crc: number } | null> {
    if (!this.stored.has(index)) return null;
    const key = chunkKey(index);
    this.downloads++;
    const obj = await this.backend.get(key);
    if (obj === undefined) {
      this.log.warn('chunk listed in the store is gone; reading zeros', { chunk: index, key });
      this.forget(index);
      return null;
    }
    try {
      return await this.codec.decode(index, obj, key);
    } catch (e) {
      this.log.error('chunk failed authentication or decoding', { chunk: index, key, error: (e as Error).message });
      throw e;
    }
  }

  /**
   * Stores a chunk's plaintext (or deletes its object when it is all zeros / null). Returns the CRC-32
   * of the plaintext stored (undefined when the object was deleted).
   */
  async put(index: number, plain: Uint8Array | null): Promise<number | undefined> {
    this.guard?.();
    const { obj, crc } = plain ? await this.codec.encode(index, plain) : { obj: null, crc: undefined };
    this.guard?.();
    const key = chunkKey(index);
    this.uploads++;
    if (obj === null) {
      if (!this.stored.has(index)) return undefined;
      await this.backend.delete(key);
      this.forget(index);
      return undefined;
    }
    await this.backend.put(key, obj);
    this.storedBytes += obj.length - (this.stored.get(index) ?? 0);
    this.stored.set(index, obj.length);
    return crc;
  }

  private forget(index: number): void {
    this.storedBytes -= this.stored.get(index) ?? 0;
    this.stored.delete(index);
  }
}
