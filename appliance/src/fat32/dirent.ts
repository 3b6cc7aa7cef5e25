/**
 * Encoding of 32-byte FAT directory entries: short (8.3) entries, VFAT long-name entries, and the
 * date/time fields. Timestamps are local time, as FAT defines them; dates before 1980-01-01 or after
 * 2107-12-31 23:59:58 are clamped to those limits.
 */
import { lfnChecksum } from './names.js';

export const ATTR_READ_ONLY = 0x01;
export const ATTR_HIDDEN = 0x02;
export const ATTR_VOLUME_ID = 0x08;
export const ATTR_DIRECTORY = 0x10;
export const ATTR_ARCHIVE = 0x20;
export const ATTR_LFN = 0x0f;

export const DIRENT_SIZE = 32;

const MIN_TIME = new Date(1980, 0, 1, 0, 0, 0).getTime();
const MAX_TIME = new Date(2107, 11, 31, 23, 59, 58).getTime();

export interface FatTime {
  date: number;
  time: number;
  /** 10 ms units past the even second (0-199), for creation times. */
  tenths: number;
}

/** FAT date, time (2-second resolution) and creation tenths for a Unix time in milliseconds. */
export function fatTime(ms: number): FatTime {
  const t = Math.min(MAX_TIME, Math.max(MIN_TIME, Number.isFinite(ms) ? ms : MIN_TIME));
  // One time-zone lookup, then UTC getters on the shifted time (local getters look the zone up each).
  const d = new Date(t - new Date(t).getTimezoneOffset() * 60_000);
  const date = ((d.getUTCFullYear() - 1980) << 9) | ((d.getUTCMonth() + 1) << 5) | d.getUTCDate();
  const time = (d.getUTCHours() << 11) | (d.getUTCMinutes() << 5) | (d.getUTCSeconds() >> 1);
  const tenths = (d.getUTCSeconds() & 1) * 100 + Math.floor(d.getUTCMilliseconds() / 10);
  return { date, time, tenths };
}

export interface ShortEntryFields {
  /** The 11-byte short name field (latin1 string or bytes). */
  name: Uint8Array | string;
  attr: number;
  firstCluster: number;
  size: number;
  mtimeMs: number;
  atimeMs: number;
  birthtimeMs: number;
}

/** Writes one short entry at `buf[off]`. */
export function writeShortEntry(buf: Buffer, off: number, e: ShortEntryFields): void {
  if (typeof e.name === 'string') buf.write(e.name, off, 11, 'latin1');
  else buf.set(e.name.subarray(0, 11), off);
  buf[off + 11] = e.attr;
  buf[off + 12] = 0;
  const c = fatTime(e.birthtimeMs);
  const m = fatTime(e.mtimeMs);
  const a = fatTime(e.atimeMs);
  buf[off + 13] = c.tenths;
  buf.writeUInt16LE(c.time, off + 14);
  buf.writeUInt16LE(c.date, off + 16);
  buf.writeUInt16LE(a.date, off + 18);
  buf.writeUInt16LE((e.firstCluster >>> 16) & 0xffff, off + 20);
  buf.writeUInt16LE(m.time, off + 22);
  buf.writeUInt16LE(m.date, off + 24);
  buf.writeUInt16LE(e.firstCluster & 0xffff, off + 26);
  buf.writeUInt32LE(e.size, off + 28);
}

/** Byte offsets within a long-name entry of its 13 UTF-16 units. */
const LFN_UNIT_OFFSETS = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/**
 * Writes the long-name entries of `name` at `buf[off]` (highest-numbered first, as on disk) and
 * returns the offset after them, where the short entry goes.
 */
export function writeLfnEntries(buf: Buffer, off: number, name: string, shortName: Uint8Array | string): number {
  const slots = Math.ceil(name.length / 13);
  const sum = lfnChecksum(shortName);
  for (let s = slots; s >= 1; s--) {
    buf[off] = s | (s === slots ? 0x40 : 0);
    buf[off + 11] = ATTR_LFN;
    buf[off + 12] = 0;
    buf[off + 13] = sum;
    buf.writeUInt16LE(0, off + 26);
    const first = (s - 1) * 13;
    for (let i = 0; i < 13; i++) {
      const at = first + i;
      // The name ends with one 0x0000 when it does not fill the slot, then 0xFFFF padding.
      const unit = at < name.length ? name.charCodeAt(at) : at === name.length ? 0 : 0xffff;
      buf.writeUInt16LE(unit, off + LFN_UNIT_OFFSETS[i]!);
    }
    off += DIRENT_SIZE;
  }
  return off;
}
