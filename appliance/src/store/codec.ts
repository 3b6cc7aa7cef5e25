/**
 * The per-chunk codec, in this order: zero detection (an all-zero chunk has no object), zstd
 * compression (skipped when two 4 KiB samples do not compress; kept only when it shrinks the chunk), AES-256-GCM with a fresh random 96-bit nonce per
 * write. The associated data binds the volume id, the chunk index and the flags, so a chunk moved to
 * another index, swapped or replayed from another volume fails authentication.
 *
 * Object layout: [version u8][flags u8] then
 *   encrypted:   [nonce 12][ciphertext][tag 16]
 *   unencrypted: [payload][crc32 of AAD + payload, u32 BE]   (detects corruption, not tampering)
 */
import { compress, decompress } from '@mongodb-js/zstd';
import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import { isAllZero } from '../block/device.js';
import type { Keys, VolumeHeader } from './header.js';

const OBJECT_VERSION = 1;
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
  private readonly nonces = Buffer.alloc(NONCE * NONCE_BATCH);
  private nonceAt = this.nonces.length;
  private readonly histogram = new Uint32Array(256);

  constructor(
    private readonly header: VolumeHeader,
    private readonly keys: Keys | undefined,
  ) {
    this.volumeId = Buffer.from(header.volumeId, 'hex');
    this.encrypted = header.cipher !== 'none';
    if (this.encrypted && !keys) throw new BridgeError('CONFIG', 'an encrypted volume needs its key');
  }

  /** The object for a chunk's plaintext, or null when the chunk is all zeros (it is not stored). */
  async encode(index: number, plain: Uint8Array): Promise<Buffer | null> {
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
    const aad = this.aad(index, flags);
    if (this.encrypted) {
      const nonce = this.nextNonce();
      const c = createCipheriv('aes-256-gcm', this.keys!.data, nonce);
      c.setAAD(aad);
      // One output buffer: large chunk-sized garbage is what the GC spends its time on here.
      const out = Buffer.allocUnsafe(2 + NONCE + payload.byteLength + TAG);
      out[0] = OBJECT_VERSION;
      out[1] = flags;
      nonce.copy(out, 2);
      c.update(payload).copy(out, 2 + NONCE);
      c.final();
      c.getAuthTag().copy(out, out.length - TAG);
      return out;
    }
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc32(payload, crc32(aad)));
    return Buffer.concat([Buffer.from([OBJECT_VERSION, flags]), payload, sum]);
  }

  /** The plaintext of a stored chunk; EIO naming the chunk when it fails authentication or decoding. */
  async decode(index: number, obj: Buffer, key: string): Promise<Buffer> {
    const bad = (why: string, cause?: unknown): BridgeError =>
      new BridgeError('EIO', `chunk ${index} (${key}) is corrupt: ${why}`, { chunk: index, key }, cause === undefined ? undefined : { cause });
    if (obj.length < 2 || obj[0] !== OBJECT_VERSION) throw bad(`unknown object version ${obj[0]}`);
    const flags = obj[1]!;
    if (((flags & F_ENCRYPTED) !== 0) !== this.encrypted) throw bad(this.encrypted ? 'object is not encrypted' : 'object is encrypted');
    const aad = this.aad(index, flags);
    let payload: Buffer;
    if (this.encrypted) {
      if (obj.length < 2 + NONCE + TAG) throw bad('object too short');
      const d = createDecipheriv('aes-256-gcm', this.keys!.data, obj.subarray(2, 2 + NONCE));
      d.setAAD(aad);
      d.setAuthTag(obj.subarray(obj.length - TAG));
      try {
        // GCM's final() yields no bytes; it checks the tag.
        payload = d.update(obj.subarray(2 + NONCE, obj.length - TAG));
        d.final();
      } catch (e) {
        throw bad('authentication failed', e);
      }
    } else {
      if (obj.length < 6) throw bad('object too short');
      payload = obj.subarray(2, obj.length - 4);
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
    return plain;
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

  private aad(index: number, flags: number): Buffer {
    const a = Buffer.alloc(4 + 16 + 8 + 1);
    a.write('BRS1', 0, 'latin1');
    this.volumeId.copy(a, 4);
    a.writeBigUInt64BE(BigInt(index), 20);
    a[28] = flags;
    return a;
  }
}
