/**
 * The bottom layer of the store stack: a flat namespace of objects (S3 bucket + prefix, or a local
 * directory). Everything above speaks only this interface, so a fault-injecting or retrying wrapper
 * can sit between the layers (see retry.ts and the fault tests).
 *
 * Object names: `header.json`, `lock.json`, and one `c/HH/IIIIIIIIIIII` per stored chunk, where
 * IIII is the chunk index in hex and HH a hash of it. The hash spreads chunks over 256 S3 key-space
 * partitions (and directories), and all chunks still list with the single prefix `c/`.
 */
import { BridgeError } from '../../../shared/src/errors.js';

export interface ObjectInfo {
  key: string;
  size: number;
}

export interface ObjectBackend {
  /** Human-readable location, e.g. `dir:/srv/vol` or `s3://bucket/prefix`. */
  readonly location: string;
  /** The object's bytes, or undefined when it does not exist. */
  get(key: string): Promise<Buffer | undefined>;
  /** Stores an object durably (returns once the backend guarantees it survives a crash). */
  put(key: string, data: Uint8Array): Promise<void>;
  /** Stores an object only when no object has that key; false when one exists. */
  putIfAbsent(key: string, data: Uint8Array): Promise<boolean>;
  /** Whether putIfAbsent is atomic (two racing creators cannot both succeed); absent: not known to be. */
  atomicCreate?(): Promise<boolean>;
  /** Deletes an object; deleting a missing object is fine. */
  delete(key: string): Promise<void>;
  /** Every object whose key starts with `prefix`. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  close(): Promise<void>;
}

/** Errors a retry may cure (timeouts, resets, 5xx, throttling) carry `transient: true`. */
export function transientError(message: string, cause?: unknown): BridgeError {
  return new BridgeError('EIO', message, { transient: true }, cause === undefined ? undefined : { cause });
}

export function isTransient(e: unknown): boolean {
  return e instanceof BridgeError && e.details['transient'] === true;
}

export const HEADER_KEY = 'header.json';
export const LOCK_KEY = 'lock.json';
export const CHUNK_PREFIX = 'c/';

export function chunkKey(index: number): string {
  // Fibonacci hashing of the index: neighbours land in different partitions.
  const h = Math.imul(index >>> 0, 0x9e3779b1) ^ Math.imul(Math.floor(index / 2 ** 32), 0x85ebca6b);
  const hh = ((h >>> 24) & 0xff).toString(16).padStart(2, '0');
  return `${CHUNK_PREFIX}${hh}/${index.toString(16).padStart(12, '0')}`;
}

/** The chunk index named by a key, or undefined for keys that are not chunks. */
export function chunkIndexOf(key: string): number | undefined {
  const m = /^c\/[0-9a-f]{2}\/([0-9a-f]{12})$/.exec(key);
  if (!m) return undefined;
  const index = parseInt(m[1]!, 16);
  return chunkKey(index) === key ? index : undefined;
}

export type StoreLocation = { kind: 'dir'; path: string } | { kind: 's3'; bucket: string; prefix: string };

/** Parses `dir:PATH` or `s3://BUCKET/PREFIX`. */
export function parseStoreLocation(spec: string): StoreLocation {
  if (spec.startsWith('dir:')) {
    const path = spec.slice(4);
    if (!path) throw new BridgeError('EINVAL', `--store ${spec}: the directory path is missing (dir:PATH)`);
    return { kind: 'dir', path };
  }
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(spec);
  if (m) {
    let prefix = m[2] ?? '';
    if (prefix && !prefix.endsWith('/')) prefix += '/';
    return { kind: 's3', bucket: m[1]!, prefix };
  }
  throw new BridgeError('EINVAL', `--store ${spec}: expected dir:PATH or s3://BUCKET/PREFIX`);
}
