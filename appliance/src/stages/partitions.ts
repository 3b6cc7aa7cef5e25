/**
 * Finds the filesystem on a disk: reads its MBR or GPT partition table (no udev in the appliance, so
 * no partition nodes: we attach a loop device at the partition's offset instead) and probes each
 * candidate for a filesystem signature.
 */
import { BridgeError } from '../../../shared/src/errors.js';

/** Reads bytes at an offset; short devices fill the tail with zeros. */
export type ReadAt = (target: Uint8Array, offset: number) => Promise<void>;

export interface Partition {
  /** 1-based number as Linux names them (MBR logical partitions start at 5). */
  index: number;
  offset: number;
  size: number;
  /** MBR type byte as hex ("83") or GPT type GUID. */
  type: string;
}

export interface PartitionTable {
  scheme: 'mbr' | 'gpt' | 'none';
  partitions: Partition[];
}

const SECTOR = 512;
const EXTENDED = new Set([0x05, 0x0f, 0x85]);

async function readBytes(read: ReadAt, offset: number, length: number, diskSize: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  const n = Math.max(0, Math.min(length, diskSize - offset));
  if (n > 0) await read(buf.subarray(0, n), offset);
  return buf;
}

/** A FAT or NTFS boot sector also ends in 55 AA: it is a filesystem, not a partition table. */
function looksLikeBootSector(s0: Buffer): boolean {
  const at = (o: number, n: number): string => s0.toString('latin1', o, o + n);
  return at(54, 3) === 'FAT' || at(82, 5) === 'FAT32' || at(3, 4) === 'NTFS' || at(3, 5) === 'EXFAT';
}

export async function readPartitionTable(read: ReadAt, diskSize: number): Promise<PartitionTable> {
  const s0 = await readBytes(read, 0, SECTOR, diskSize);
  if (s0[510] !== 0x55 || s0[511] !== 0xaa || looksLikeBootSector(s0)) return { scheme: 'none', partitions: [] };
  const entries = [0, 1, 2, 3].map((i) => {
    const e = s0.subarray(446 + i * 16, 446 + (i + 1) * 16);
    return { status: e[0]!, type: e[4]!, start: e.readUInt32LE(8), sectors: e.readUInt32LE(12) };
  });
  // Boot flags other than 0x00/0x80 mean these 64 bytes are not a partition table.
  if (entries.some((e) => e.status !== 0 && e.status !== 0x80)) return { scheme: 'none', partitions: [] };
  if (entries.some((e) => e.type === 0xee)) return readGpt(read, diskSize);
  const partitions: Partition[] = [];
  for (const [i, e] of entries.entries()) {
    if (e.type === 0 || e.sectors === 0) continue;
    if (EXTENDED.has(e.type)) {
      partitions.push(...(await readLogical(read, diskSize, e.start)));
      continue;
    }
    partitions.push({ index: i + 1, offset: e.start * SECTOR, size: e.sectors * SECTOR, type: e.type.toString(16).padStart(2, '0') });
  }
  return { scheme: 'mbr', partitions: partitions.filter((p) => p.offset + p.size <= diskSize) };
}

/** Logical partitions: a chain of extended boot records, each relative to the extended partition. */
async function readLogical(read: ReadAt, diskSize: number, extStart: number): Promise<Partition[]> {
  const out: Partition[] = [];
  let ebr = extStart;
  for (let index = 5; index < 5 + 128; index++) {
    const s = await readBytes(read, ebr * SECTOR, SECTOR, diskSize);
    if (s[510] !== 0x55 || s[511] !== 0xaa) break;
    const type = s[446 + 4]!;
    const start = s.readUInt32LE(446 + 8);
    const sectors = s.readUInt32LE(446 + 12);
    if (type !== 0 && sectors > 0) out.push({ index, offset: (ebr + start) * SECTOR, size: sectors * SECTOR, type: type.toString(16).padStart(2, '0') });
    const next = s.readUInt32LE(446 + 16 + 8);
    if (s[446 + 16 + 4] === 0 || next === 0) break;
    ebr = extStart + next;
  }
  return out;
}

function guid(b: Buffer): string {
  const hex = (x: Buffer): string => x.toString('hex');
  const le = (x: Buffer): string => hex(Buffer.from(x).reverse());
  return `${le(b.subarray(0, 4))}-${le(b.subarray(4, 6))}-${le(b.subarray(6, 8))}-${hex(b.subarray(8, 10))}-${hex(b.subarray(10, 16))}`.toUpperCase();
}

async function readGpt(read: ReadAt, diskSize: number): Promise<PartitionTable> {
  const h = await readBytes(read, SECTOR, SECTOR, diskSize);
  if (h.toString('latin1', 0, 8) !== 'EFI PART') throw new BridgeError('EINVAL', 'the disk has a protective MBR but no GPT header at LBA 1');
  const entriesLba = Number(h.readBigUInt64LE(72));
  const count = Math.min(h.readUInt32LE(80), 1024);
  const entrySize = h.readUInt32LE(84);
  if (entrySize < 128) throw new BridgeError('EINVAL', `GPT entry size ${entrySize} is invalid`);
  const table = await readBytes(read, entriesLba * SECTOR, count * entrySize, diskSize);
  const partitions: Partition[] = [];
  for (let i = 0; i < count; i++) {
    const e = table.subarray(i * entrySize, (i + 1) * entrySize);
    if (e.subarray(0, 16).every((b) => b === 0)) continue;
    const first = Number(e.readBigUInt64LE(32));
    const last = Number(e.readBigUInt64LE(40));
    if (last < first) continue;
    const p = { index: i + 1, offset: first * SECTOR, size: (last - first + 1) * SECTOR, type: guid(e.subarray(0, 16)) };
    if (p.offset + p.size <= diskSize) partitions.push(p);
  }
  return { scheme: 'gpt', partitions };
}

/** The filesystem type whose signature is at `offset`, or undefined. */
export async function probeFilesystem(read: ReadAt, offset: number, size: number): Promise<string | undefined> {
  const head = await readBytes(read, offset, Math.min(size, 70 * 1024), offset + Math.min(size, 70 * 1024));
  const at = (o: number, n: number): string => head.toString('latin1', o, o + n);
  if (head.length >= 1082 && head.readUInt16LE(1024 + 56) === 0xef53) return 'ext4';
  if (at(0, 4) === 'XFSB') return 'xfs';
  if (head.length >= 65536 + 72 && at(65536 + 64, 8) === '_BHRfS_M') return 'btrfs';
  if (at(3, 8) === 'NTFS    ') return 'ntfs';
  if (at(3, 8) === 'EXFAT   ') return 'exfat';
  if (at(82, 5) === 'FAT32' || at(54, 3) === 'FAT') return 'vfat';
  return undefined;
}

export interface FilesystemLocation {
  offset: number;
  size: number;
  /** Partition number, or "whole". */
  partition: number | 'whole';
  /** Detected filesystem type, when its signature is known. */
  fstype?: string;
}

/**
 * Where the filesystem to mount lies. `which`: a partition number, "whole" (the disk itself) or
 * "auto" (the whole disk when it has no partition table, else the first partition with a known
 * filesystem, else the first partition).
 */
export async function locateFilesystem(read: ReadAt, diskSize: number, which: number | 'auto' | 'whole', what: string): Promise<FilesystemLocation> {
  const whole = async (): Promise<FilesystemLocation> => {
    const fstype = await probeFilesystem(read, 0, diskSize);
    return { offset: 0, size: diskSize, partition: 'whole', ...(fstype ? { fstype } : {}) };
  };
  if (which === 'whole') return whole();
  const table = await readPartitionTable(read, diskSize);
  if (table.scheme === 'none') {
    if (which === 'auto') return whole();
    throw new BridgeError('ENOENT', `${what} has no partition table, so it has no partition ${which} (use "whole" or "auto")`);
  }
  if (typeof which === 'number') {
    const p = table.partitions.find((x) => x.index === which);
    if (!p) throw new BridgeError('ENOENT', `${what} has no partition ${which} (it has ${table.partitions.map((x) => x.index).join(', ') || 'none'})`);
    const fstype = await probeFilesystem(read, p.offset, p.size);
    return { offset: p.offset, size: p.size, partition: p.index, ...(fstype ? { fstype } : {}) };
  }
  for (const p of table.partitions) {
    const fstype = await probeFilesystem(read, p.offset, p.size);
    if (fstype) return { offset: p.offset, size: p.size, partition: p.index, fstype };
  }
  const first = table.partitions[0];
  if (!first) throw new BridgeError('ENOENT', `${what} has an empty ${table.scheme.toUpperCase()} partition table`);
  return { offset: first.offset, size: first.size, partition: first.index };
}
