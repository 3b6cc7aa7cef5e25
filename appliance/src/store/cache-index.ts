/**
 * The index of a cleanly stopped cache (`CACHEDIR/index`): which slot holds which chunk, with the
 * CRC-32 of its plaintext, and the writer session it belongs to. Written at a clean close (after
 * every chunk was uploaded), deleted durably when the cache opens again — before any slot changes —
 * so it never describes a slot file that moved on (a crash leaves no index: the cache starts cold).
 *
 * File: [magic 'BRX1'][volume id 16][chunk size u32][session 8][count u32] then per slot
 * [chunk index u48][slot u32][crc u32], then [crc32 of everything before, u32]. All big-endian.
 */
import { promises as fsp, constants as fsc } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { fsyncPath } from '../durable.js';

const MAGIC = 'BRX1';
const HEAD = 4 + 16 + 4 + 8 + 4;
const REC = 14;
const FILE = 'index';

export interface IndexedSlot {
  index: number;
  slot: number;
  crc: number;
}

export interface CacheIndex {
  session: string;
  slots: IndexedSlot[];
}

/** Bytes the index of `n` slots takes (the cache reserves room for it). */
export function indexBytes(n: number): number {
  return HEAD + n * REC + 4;
}

export async function writeCacheIndex(dir: string, volumeId: string, chunkSize: number, index: CacheIndex): Promise<void> {
  const b = Buffer.alloc(indexBytes(index.slots.length));
  b.write(MAGIC, 0, 'latin1');
  Buffer.from(volumeId, 'hex').copy(b, 4);
  b.writeUInt32BE(chunkSize, 20);
  Buffer.from(index.session.padStart(16, '0').slice(-16), 'hex').copy(b, 24);
  b.writeUInt32BE(index.slots.length, 32);
  let at = HEAD;
  for (const s of index.slots) {
    b.writeUIntBE(s.index, at, 6);
    b.writeUInt32BE(s.slot, at + 6);
    b.writeUInt32BE(s.crc >>> 0, at + 10);
    at += REC;
  }
  b.writeUInt32BE(crc32(b.subarray(0, at)), at);
  const tmp = join(dir, FILE + '.tmp');
  const fh = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC, 0o600);
  try {
    await fh.writeFile(b);
    await fh.datasync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, join(dir, FILE));
  await fsyncPath(dir);
}

/**
 * Reads and removes (durably) the index; undefined when there is none, or it is damaged or belongs
 * to another volume or chunk size.
 */
export async function takeCacheIndex(dir: string, volumeId: string, chunkSize: number): Promise<CacheIndex | undefined> {
  const path = join(dir, FILE);
  let b: Buffer;
  try {
    b = await fsp.readFile(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  await fsp.rm(path, { force: true });
  await fsyncPath(dir);
  if (b.length < HEAD + 4 || b.toString('latin1', 0, 4) !== MAGIC) return undefined;
  const n = b.readUInt32BE(32);
  if (b.length !== indexBytes(n) || crc32(b.subarray(0, b.length - 4)) !== b.readUInt32BE(b.length - 4)) return undefined;
  if (b.subarray(4, 20).toString('hex') !== volumeId || b.readUInt32BE(20) !== chunkSize) return undefined;
  const slots: IndexedSlot[] = [];
  for (let i = 0, at = HEAD; i < n; i++, at += REC) slots.push({ index: b.readUIntBE(at, 6), slot: b.readUInt32BE(at + 6), crc: b.readUInt32BE(at + 10) });
  return { session: b.subarray(24, 32).toString('hex'), slots };
}
