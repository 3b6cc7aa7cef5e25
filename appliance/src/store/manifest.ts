/**
 * Rollback detection (volumes of format 2 with encryption): the manifest object `manifest` records,
 * per chunk, the newest write generation known to be stored, under an HMAC only the passphrase
 * holder can make. Every chunk object carries its generation in its authenticated data (codec.ts),
 * so a reader can tell an object older than the manifest's entry — an old version the store owner
 * put back — and refuses it with EIO naming the chunk.
 *
 * Generations come from a volume-wide counter: each writer session reserves a block of 2^32 by
 * writing the manifest (nextGen += 2^32) before its first upload, so generations only grow across
 * sessions. The manifest lags the chunks (it is written every CHECKPOINT_MS while chunks change and
 * at close): an object newer than its entry is fine, so a crash never makes good data unreadable,
 * and a replay of a version newer than the last checkpoint goes unnoticed. The manifest's own version
 * grows with every write; a cache directory remembers the newest it saw (session.json) and refuses
 * an older one (the whole volume rolled back). Not detected: a whole-volume rollback seen only by a
 * cache directory that never saw the newer state, and deleted chunks (absent objects read as zeros).
 *
 * Object: ['BRM1'][volume id 16][version u64][nextGen u64][count u32][zstd length u32]
 *         [zstd of count × u64 generations][HMAC-SHA256 of all before, 32]. Big-endian.
 */
import { compress, decompress } from '@mongodb-js/zstd';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import type { ObjectBackend } from './backend.js';
import type { VolumeHeader } from './header.js';

export const MANIFEST_KEY = 'manifest';
const MAGIC = 'BRM1';
const HEAD = 4 + 16 + 8 + 8 + 4 + 4;
const MAC = 32;
/** Generations a writer session reserves at a time. */
export const SESSION_BLOCK = 2 ** 32;
/** How often a writer writes the manifest while chunks change. */
export const CHECKPOINT_MS = 10_000;

export class Manifest {
  /** Throws when this process may no longer write the store (writer lease lost). */
  guard: (() => void) | undefined;
  private dirty = false;
  private tail: Promise<void> = Promise.resolve();

  private constructor(
    private readonly backend: ObjectBackend,
    private readonly header: VolumeHeader,
    private readonly key: Buffer,
    /** Grows with every write of the manifest. */
    public version: number,
    private nextGen: number,
    private gens: Float64Array,
  ) {}

  /** Reads and authenticates the manifest (a volume without one starts empty). */
  static async load(backend: ObjectBackend, header: VolumeHeader, key: Buffer): Promise<Manifest> {
    const data = await backend.get(MANIFEST_KEY);
    if (!data) return new Manifest(backend, header, key, 0, 1, new Float64Array(0));
    const bad = (why: string): BridgeError => new BridgeError('EIO', `the manifest of volume ${header.volumeId} at ${backend.location} ${why}`);
    if (data.length < HEAD + MAC || data.toString('latin1', 0, 4) !== MAGIC) throw bad('is not a bridge manifest');
    const mac = createHmac('sha256', key)
      .update(data.subarray(0, data.length - MAC))
      .digest();
    if (!timingSafeEqual(mac, data.subarray(data.length - MAC))) throw bad('failed authentication (changed by someone without the passphrase)');
    if (data.subarray(4, 20).toString('hex') !== header.volumeId) throw bad('belongs to another volume');
    const version = Number(data.readBigUInt64BE(20));
    const nextGen = Number(data.readBigUInt64BE(28));
    const count = data.readUInt32BE(36);
    const zlen = data.readUInt32BE(40);
    if (HEAD + zlen + MAC !== data.length) throw bad('has a wrong length');
    let raw: Buffer;
    try {
      raw = count ? await decompress(data.subarray(HEAD, HEAD + zlen)) : Buffer.alloc(0);
    } catch (e) {
      throw bad(`cannot be decompressed: ${errorMessage(e)}`);
    }
    if (raw.length !== count * 8) throw bad('has a wrong length');
    const gens = new Float64Array(count);
    for (let i = 0; i < count; i++) gens[i] = Number(raw.readBigUInt64BE(i * 8));
    return new Manifest(backend, header, key, version, nextGen, gens);
  }

  /** The newest generation recorded for chunk `index` (0: none). */
  expected(index: number): number {
    return this.gens[index] ?? 0;
  }

  /** Notes that chunk `index` is stored at generation `gen` (made durable by the next checkpoint). */
  record(index: number, gen: number): void {
    if (index >= this.gens.length) {
      const grown = new Float64Array(Math.max(index + 1, this.gens.length * 2, 1024));
      grown.set(this.gens);
      this.gens = grown;
    }
    if (gen > this.gens[index]!) {
      this.gens[index] = gen;
      this.dirty = true;
    }
  }

  /** Reserves the next block of generations for this writer; durable when it returns. */
  async reserve(): Promise<{ first: number; end: number }> {
    return this.serial(async () => {
      const first = this.nextGen;
      this.nextGen += SESSION_BLOCK;
      await this.write();
      return { first, end: this.nextGen };
    });
  }

  /** Writes the manifest when chunks were recorded since the last write. */
  checkpoint(): Promise<void> {
    return this.serial(async () => {
      if (this.dirty) await this.write();
    });
  }

  private async write(): Promise<void> {
    this.guard?.();
    this.dirty = false;
    const version = this.version + 1;
    // Trailing chunks without an entry need no bytes.
    let count = this.gens.length;
    while (count > 0 && this.gens[count - 1] === 0) count--;
    const raw = Buffer.alloc(count * 8);
    for (let i = 0; i < count; i++) raw.writeBigUInt64BE(BigInt(this.gens[i]!), i * 8);
    const z = count ? await compress(raw, 3) : Buffer.alloc(0);
    const out = Buffer.alloc(HEAD + z.length + MAC);
    out.write(MAGIC, 0, 'latin1');
    Buffer.from(this.header.volumeId, 'hex').copy(out, 4);
    out.writeBigUInt64BE(BigInt(version), 20);
    out.writeBigUInt64BE(BigInt(this.nextGen), 28);
    out.writeUInt32BE(count, 36);
    out.writeUInt32BE(z.length, 40);
    z.copy(out, HEAD);
    createHmac('sha256', this.key)
      .update(out.subarray(0, HEAD + z.length))
      .digest()
      .copy(out, HEAD + z.length);
    try {
      await this.backend.put(MANIFEST_KEY, out);
    } catch (e) {
      this.dirty = true;
      throw e;
    }
    this.version = version;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn);
    this.tail = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }
}

/** Writes the manifest every CHECKPOINT_MS while a writer is open; failures are retried next time. */
export function startCheckpoints(m: Manifest, log: Logger, every = CHECKPOINT_MS): () => void {
  const t = setInterval(() => {
    m.checkpoint().catch((e: unknown) => log.warn('could not write the manifest; retrying later', { error: errorMessage(e) }));
  }, every);
  t.unref();
  return () => clearInterval(t);
}
