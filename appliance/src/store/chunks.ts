/**
 * Chunks in the object store: the codec over the backend, plus the map of which chunks exist (built
 * by one listing at open, kept current by every put and delete). Absent chunks read as zeros without
 * a request; writing an all-zero chunk deletes its object instead of storing it.
 */
import type { Logger } from '../../../shared/src/logger.js';
import { CHUNK_PREFIX, chunkIndexOf, chunkKey, type ObjectBackend } from './backend.js';
import type { Codec } from './codec-pool.js';
import type { Manifest } from './manifest.js';
import { BridgeError } from '../../../shared/src/errors.js';

/** EIO for an object older than the manifest's entry for its chunk. */
export function rolledBack(index: number, key: string, gen: number, want: number): BridgeError {
  return new BridgeError(
    'EIO',
    `chunk ${index} (${key}) was rolled back: its object has write generation ${gen}, older than ${want} recorded in the volume's manifest`,
    { chunk: index, key, generation: gen, manifest: want },
  );
}

export class ChunkStore {
  /** index → stored object size. */
  readonly stored = new Map<number, number>();
  storedBytes = 0;
  uploads = 0;
  downloads = 0;
  /** Throws when this process may no longer change the store (writer lease lost). */
  guard: (() => void) | undefined;
  /** Rollback detection (format 2, encrypted): the newest generation recorded per chunk. */
  manifest: Manifest | undefined;
  private gens: { first: number; end: number } | undefined;
  private moreGens: (() => Promise<{ first: number; end: number }>) | undefined;

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
    let d;
    try {
      d = await this.codec.decode(index, obj, key);
    } catch (e) {
      this.log.error('chunk failed authentication or decoding', { chunk: index, key, error: (e as Error).message });
      throw e;
    }
    const want = this.manifest?.expected(index) ?? 0;
    if (d.gen < want) {
      this.log.error('chunk rolled back to an older version', { chunk: index, key, generation: d.gen, manifest: want });
      throw rolledBack(index, key, d.gen, want);
    }
    return d;
  }

  /** Generations for new objects, from the block the writer session reserved (manifest.ts). */
  useGenerations(block: { first: number; end: number }, more: () => Promise<{ first: number; end: number }>): void {
    this.gens = block;
    this.moreGens = more;
  }

  /**
   * Stores a chunk's plaintext (or deletes its object when it is all zeros / null). Returns the CRC-32
   * of the plaintext stored (undefined when the object was deleted).
   */
  async put(index: number, plain: Uint8Array | null): Promise<number | undefined> {
    this.guard?.();
    const gen = plain ? await this.nextGen() : 0;
    const { obj, crc } = plain ? await this.codec.encode(index, plain, gen) : { obj: null, crc: undefined };
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
    this.manifest?.record(index, gen);
    this.storedBytes += obj.length - (this.stored.get(index) ?? 0);
    this.stored.set(index, obj.length);
    return crc;
  }

  private async nextGen(): Promise<number> {
    if (!this.gens) return 0;
    if (this.gens.first >= this.gens.end) this.gens = await this.moreGens!();
    return this.gens.first++;
  }

  private forget(index: number): void {
    this.storedBytes -= this.stored.get(index) ?? 0;
    this.stored.delete(index);
  }
}
