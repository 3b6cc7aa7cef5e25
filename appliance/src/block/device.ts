/**
 * The block device: one of the two kinds of value in bridge's pipeline (the other is a tree).
 * Every stage that yields bytes by offset implements this — memory, sparse file, chunked store,
 * synthesized FAT32 volume — and every one passes the same conformance suite
 * (test/conformance/block-device.ts). Modelled on nbdkit's callback table.
 *
 * Rules all implementations keep:
 * - I/O must lie within [0, size): anything past the end throws BridgeError('ERANGE'), nothing is done.
 * - Zero-length I/O succeeds and does nothing (even at offset == size).
 * - `write` on a device without `writable` throws BridgeError('EROFS').
 * - `flush` returns only when every write that completed before it was called is durable
 *   (for persistent devices: survives a crash of this process).
 * - Concurrent calls are allowed; a read overlapping an in-flight write sees either old or new bytes
 *   per byte, and writes complete in some order (last completed wins).
 */
import { BridgeError } from '../../../shared/src/errors.js';

export interface BlockCapabilities {
  /** write() is allowed. */
  readonly writable: boolean;
  /** trim() releases storage (otherwise it only zeroes or is refused). */
  readonly trim: boolean;
  /** Contents survive close() and reopen. */
  readonly persistent: boolean;
  /** resize() can grow the device. */
  readonly resizable: boolean;
}

/** One run of a device's allocation map (NBD base:allocation). */
export interface Extent {
  length: number;
  /** No storage behind it (writes may allocate). */
  hole: boolean;
  /** Reads as zeros. */
  zero: boolean;
}

export interface BlockDevice {
  /** Size in bytes. */
  readonly size: number;
  /** Preferred alignment of I/O (bytes); a hint, any alignment works. */
  readonly blockSize: number;
  readonly capabilities: BlockCapabilities;
  /** Fill `target` with the bytes at [offset, offset + target.length). */
  read(target: Uint8Array, offset: number): Promise<void>;
  /** Store `data` at [offset, offset + data.length). */
  write(data: Uint8Array, offset: number): Promise<void>;
  /** Make every completed write durable. */
  flush(): Promise<void>;
  /** Make [offset, offset + length) read as zeros and, where supported, release its storage. */
  trim(offset: number, length: number): Promise<void>;
  /** Make [offset, offset + length) read as zeros. */
  zero(offset: number, length: number): Promise<void>;
  /**
   * Optional: the allocation of [offset, offset + length) as consecutive runs starting at `offset`
   * (may cover less than asked, never more). Lets NBD clients skip what reads as zeros. Without it,
   * everything counts as data.
   */
  extents?(offset: number, length: number): Promise<Extent[]>;
  /** Grow (never shrink) the device. */
  resize?(newSize: number): Promise<void>;
  /** Flush and release resources. Further calls throw CLOSED. */
  close(): Promise<void>;
}

/** Throws the errors the interface promises for an I/O request; returns false for zero-length I/O. */
export function checkIo(dev: { size: number; capabilities: BlockCapabilities }, offset: number, length: number, isWrite: boolean): boolean {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new BridgeError('EINVAL', `bad I/O request: offset ${offset}, length ${length}`);
  }
  if (isWrite && !dev.capabilities.writable) throw new BridgeError('EROFS', 'device is read-only');
  if (length === 0) return false;
  if (offset + length > dev.size) {
    throw new BridgeError('ERANGE', `I/O at ${offset}+${length} is past the end of the device (${dev.size} bytes)`, { offset, length, size: dev.size });
  }
  return true;
}

/** A shared all-zero buffer for zero-fill; never write into it. */
export const ZEROS = Buffer.alloc(1024 * 1024);

/** Writes zeros over a range through `write`, for devices without a cheaper way. */
export async function zeroByWriting(dev: BlockDevice, offset: number, length: number): Promise<void> {
  let pos = offset;
  const end = offset + length;
  while (pos < end) {
    const n = Math.min(ZEROS.length, end - pos);
    await dev.write(ZEROS.subarray(0, n), pos);
    pos += n;
  }
}

/** True when every byte of `buf` is zero (fast path on 8-byte words). */
export function isAllZero(buf: Uint8Array): boolean {
  const words = Math.floor(buf.byteLength / 8);
  if (buf.byteOffset % 8 === 0 && words > 0) {
    const view = new BigUint64Array(buf.buffer, buf.byteOffset, words);
    for (let i = 0; i < words; i++) if (view[i] !== 0n) return false;
  } else {
    for (let i = 0; i < words * 8; i++) if (buf[i] !== 0) return false;
  }
  for (let i = words * 8; i < buf.byteLength; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Appends a run to `out`, merging it with the previous one when both have the same state. */
export function pushExtent(out: Extent[], length: number, hole: boolean, zero: boolean): void {
  if (length <= 0) return;
  const last = out[out.length - 1];
  if (last && last.hole === hole && last.zero === zero) last.length += length;
  else out.push({ length, hole, zero });
}

/** Guards against use after close. */
export class Lifecycle {
  private closed = false;
  check(): void {
    if (this.closed) throw new BridgeError('CLOSED', 'device is closed');
  }
  /** Marks closed; returns false when it already was. */
  close(): boolean {
    if (this.closed) return false;
    this.closed = true;
    return true;
  }
  get isClosed(): boolean {
    return this.closed;
  }
}
