/**
 * The per-chunk codec, in this order: zero detection (an all-zero chunk has no object), zstd
 * compression (skipped when two 4 KiB samples look incompressible; kept only when it shrinks the
 * chunk), AES-256-GCM with a fresh random 96-bit nonce per write. The associated data binds the
 * volume id, the chunk index, the flags and (format 2) the chunk's write generation, so a chunk moved
 * to another index, swapped or replayed from another volume fails authentication, and the generation
 * a reader sees is the one written (manifest.ts compares it with the newest one recorded).
 *
 * Object layout: [version u8][flags u8] then, version 2 only, [generation u64 BE], then
 *   encrypted:   [nonce 12][ciphertext][tag 16]
 *   unencrypted: [payload][crc32 of AAD + payload, u32 BE]   (detects corruption, not tampering)
 * A volume of format 2 writes and accepts only version 2 objects; format 1, only version 1.
 */
import { compress, decompress } from '@mongodb-js/zstd';
import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import { isAllZero } from '../block/device.js';
import type { Keys, VolumeHeader } from './header.js';

const GEN = 8;
const F_ZSTD = 1;
const F_ENCRYPTED = 2;
const NONCE = 12;
const TAG = 16;
/**
 * Bits per byte above which a sample counts as incompressible: 8 KiB of random bytes measure
 * ~7.98; text ~4.5, machine code ~6, zeros and sparse data far less.
 */
const ENTROPY_LIMIT = 7.9;
/** Nonces are drawn from a buffer of random bytes refilled this many at a time (one syscall each). */
const NONCE_BATCH = 256;

export class ChunkCodec {
  private readonly volumeId: Buffer;
  private readonly encrypted: boolean;
  /** Object version = volume format (1: no generation). */
  private readonly version: number;
  private readonly head: number;
  private readonly nonces = Buffer.alloc(NONCE * NONCE_BATCH);
  private nonceAt = this.nonces.length;
  private readonly histogram = new Uint32Array(256);

  constructor(
    private readonly header: VolumeHeader,
    private readonly keys: Pick<Keys, 'data'> | undefined,
  ) {
    this.volumeId = Buffer.from(header.volumeId, 'hex');
    this.encrypted = header.cipher !== 'none';
    this.version = header.version >= 2 ? 2 : 1;
    this.head = this.version >= 2 ? 2 + GEN : 2;
    if (this.encrypted && !keys) throw new BridgeError('CONFIG', 'an encrypted volume needs its key');
  }

  /** The object for a chunk's plaintext at write generation `gen`, or null when the chunk is all zeros (not stored). */
  async encode(index: number, plain: Uint8Array, gen = 0): Promise<Buffer | null> {
    if (isAllZero(plain)) return null;
    let flags = this.encrypted ? F_ENCRYPTED : 0;
    let payload: Uint8Array = plain;
    if (this.header.compression === 'zstd' && this.worthCompressing(plain)) {
      const packed = await compress(Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength), this.header.compressionLevel);
      if (packed.length < plain.byteLength) {
        payload = packed;
        flags |= F_ZSTD;
      }
    }
    const aad = this.aad(index, flags, gen);
    const h = this.head;
    if (this.encrypted) {
      const nonce = this.nextNonce();
      const c = createCipheriv('aes-256-gcm', this.keys!.data, nonce);
      c.setAAD(aad);
      // One output buffer: large chunk-sized garbage is what the GC spends its time on here.
      const out = Buffer.allocUnsafe(h + NONCE + payload.byteLength + TAG);
      this.writeHead(out, flags, gen);
      nonce.copy(out, h);
      c.update(payload).copy(out, h + NONCE);
      c.final();
      c.getAuthTag().copy(out, out.length - TAG);
      return out;
    }
    const out = Buffer.allocUnsafe(h + payload.byteLength + 4);
    this.writeHead(out, flags, gen);
    out.set(payload, h);
    out.writeUInt32BE(crc32(payload, crc32(aad)), h + payload.byteLength);
    return out;
  }

  private writeHead(out: Buffer, flags: number, gen: number): void {
    out[0] = this.version;
    out[1] = flags;
    if (this.version >= 2) out.writeBigUInt64BE(BigInt(gen), 2);
  }

  /**
   * The plaintext of a stored chunk and the generation it was written with; EIO naming the chunk
   * when it fails authentication or decoding.
   */
  async decode(index: number, obj: Buffer, key: string): Promise<{ plain: Buffer; gen: number }> {
    const bad = (why: string, cause?: unknown): BridgeError =>
      new BridgeError('EIO', `chunk ${index} (${key}) is corrupt: ${why}`, { chunk: index, key }, cause === undefined ? undefined : { cause });
    const h = this.head;
    if (obj.length < 2 || obj[0] !== this.version) throw bad(`object version ${obj[0]} in a volume of format ${this.version}`);
    if (obj.length < h) throw bad('object too short');
    const flags = obj[1]!;
    const gen = this.version >= 2 ? Number(obj.readBigUInt64BE(2)) : 0;
    if (((flags & F_ENCRYPTED) !== 0) !== this.encrypted) throw bad(this.encrypted ? 'object is not encrypted' : 'object is encrypted');
    const aad = this.aad(index, flags, gen);
    let payload: Buffer;
    if (this.encrypted) {
      if (obj.length < h + NONCE + TAG) throw bad('object too short');
      const d = createDecipheriv('aes-256-gcm', this.keys!.data, obj.subarray(h, h + NONCE));
      d.setAAD(aad);
      d.setAuthTag(obj.subarray(obj.length - TAG));
      try {
        // GCM's final() yields no bytes; it checks the tag.
        payload = d.update(obj.subarray(h + NONCE, obj.length - TAG));
        d.final();
      } catch (e) {
        throw bad('authentication failed', e);
      }
    } else {
      if (obj.length < h + 4) throw bad('object too short');
      payload = obj.subarray(h, obj.length - 4);
      if (crc32(payload, crc32(aad)) !== obj.readUInt32BE(obj.length - 4)) throw bad('checksum mismatch');
    }
    let plain: Buffer;
    if (flags & F_ZSTD) {
      try {
        plain = await decompress(payload);
      } catch (e) {
        throw bad(`decompression failed: ${errorMessage(e)}`, e);
      }
    } else plain = payload;
    if (plain.length !== this.header.chunkSize) throw bad(`holds ${plain.length} bytes, not ${this.header.chunkSize}`);
    return { plain, gen };
  }

  /** A fresh random 96-bit nonce (a view into the batch: used at once, before the next call). */
  private nextNonce(): Buffer {
    if (this.nonceAt + NONCE > this.nonces.length) {
      randomFillSync(this.nonces);
      this.nonceAt = 0;
    }
    const n = this.nonces.subarray(this.nonceAt, this.nonceAt + NONCE);
    this.nonceAt += NONCE;
    return n;
  }

  /**
   * Incompressible data (already compressed or encrypted files, random bytes) is common on disks.
   * Two 4 KiB samples (the start and the middle) whose byte entropy is near 8 bits skip compressing
   * the whole chunk. A byte histogram costs ~10 µs; asking zstd about the samples meant a trip
   * through libuv's pool and back for every chunk. (Repeats of random blocks within a chunk are
   * missed: zstd would have found those.)
   */
  private worthCompressing(plain: Uint8Array): boolean {
    const S = 4096;
    if (plain.byteLength < 4 * S) return true;
    const counts = this.histogram.fill(0);
    const mid = (plain.byteLength >> 1) - S / 2;
    for (let i = 0; i < S; i++) {
      counts[plain[i]!]!++;
      counts[plain[mid + i]!]!++;
    }
    let bits = 0;
    for (const c of counts) if (c) bits -= (c / (2 * S)) * Math.log2(c / (2 * S));
    return bits < ENTROPY_LIMIT;
  }

  private aad(index: number, flags: number, gen: number): Buffer {
    const a = Buffer.alloc(this.version >= 2 ? 4 + 16 + 8 + 1 + GEN : 4 + 16 + 8 + 1);
    a.write(this.version >= 2 ? 'BRS2' : 'BRS1', 0, 'latin1');
    this.volumeId.copy(a, 4);
    a.writeBigUInt64BE(BigInt(index), 20);
    a[28] = flags;
    if (this.version >= 2) a.writeBigUInt64BE(BigInt(gen), 29);
    return a;
  }
}
