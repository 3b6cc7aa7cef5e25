/**
 * The metadata snapshot: one scan of the source tree into a flat table of entries (directories and
 * regular files), with their FAT names, attributes, times and directory slots. Nothing of the files'
 * contents is read. Entries are numbered in breadth-first order; entry 0 is the root.
 *
 * The table is what the write path will diff against: each entry keeps its source name and parent,
 * its first cluster and chain length, and the slot of its short entry in the parent directory.
 */
import { lstatSync, readdirSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import { ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_HIDDEN, ATTR_READ_ONLY } from './dirent.js';
import { basisName, exactShortName, foldCase, lfnSlots, mapLongName, shortNameField, ShortNameAllocator } from './names.js';

/** A FAT directory holds at most 65,536 entries of 32 bytes (2 MiB). */
export const MAX_DIR_SLOTS = 65_536;
/** FAT file sizes are 32-bit. */
export const MAX_FILE_SIZE = 0xffffffff;

export interface TreeEntry {
  /** Index of the parent directory entry; -1 for the root. */
  parent: number;
  isDir: boolean;
  /** Name in the source directory ('' for the root). */
  sourceName: string;
  /** Long name on the volume. */
  name: string;
  /** 11-byte short name field. */
  shortName: Buffer;
  /** Long-name entries precede the short entry. */
  lfn: boolean;
  attr: number;
  /** File size in bytes (0 for directories). */
  size: number;
  mtimeMs: number;
  atimeMs: number;
  birthtimeMs: number;
  ino: number;
  /** First cluster of the chain (0 for an empty file); set by the allocator. */
  firstCluster: number;
  /** Clusters in the chain. */
  clusters: number;
  /** Slot (32-byte entry index) of the short entry in the parent directory. */
  slot: number;
  /** Directories: child entry indexes, in slot order. */
  children?: number[];
  /** Directories: 32-byte slots used, including `.`/`..` or the volume label. */
  slots?: number;
}

export interface LeftOut {
  /** Path relative to the source, '/'-separated. */
  path: string;
  reason: string;
}

export interface Renamed {
  path: string;
  /** The long name used on the volume. */
  name: string;
}

export interface TreeSnapshot {
  source: string;
  entries: TreeEntry[];
  leftOut: LeftOut[];
  renamed: Renamed[];
  files: number;
  directories: number;
  /** Sum of file sizes. */
  bytes: number;
  takenAt: Date;
}

interface Candidate {
  sourceName: string;
  mapped: { name: string; mapped: boolean };
  st: Stats;
  isDir: boolean;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Relative path of an entry, for reports. */
export function entryPath(entries: readonly TreeEntry[], index: number): string {
  const parts: string[] = [];
  for (let i = index; i > 0; i = entries[i]!.parent) parts.push(entries[i]!.sourceName);
  return parts.reverse().join('/');
}

/** Absolute source path of an entry. */
export function sourcePath(source: string, entries: readonly TreeEntry[], index: number): string {
  return join(source, entryPath(entries, index));
}

function kindOf(st: Stats): string {
  if (st.isSymbolicLink()) return 'symbolic link (not followed)';
  if (st.isFIFO()) return 'named pipe (special file)';
  if (st.isSocket()) return 'socket (special file)';
  if (st.isBlockDevice() || st.isCharacterDevice()) return 'device node (special file)';
  return 'unsupported file type';
}

function entryFromStats(parent: number, c: Candidate): TreeEntry {
  const st = c.st;
  let attr = c.isDir ? ATTR_DIRECTORY : ATTR_ARCHIVE;
  if (!c.isDir && (st.mode & 0o222) === 0) attr |= ATTR_READ_ONLY;
  if (c.sourceName.startsWith('.')) attr |= ATTR_HIDDEN;
  return {
    parent,
    isDir: c.isDir,
    sourceName: c.sourceName,
    name: c.mapped.name,
    shortName: Buffer.alloc(0),
    lfn: false,
    attr,
    size: c.isDir ? 0 : st.size,
    mtimeMs: st.mtimeMs,
    atimeMs: st.atimeMs,
    // Creation time: the birth time when the file system records one, else the older of mtime and ctime.
    birthtimeMs: st.birthtimeMs > 0 ? st.birthtimeMs : Math.min(st.mtimeMs, st.ctimeMs),
    ino: st.ino,
    firstCluster: 0,
    clusters: 0,
    slot: 0,
  };
}

/**
 * Scans `source` into a snapshot. Synchronous system calls in a loop are several times faster than
 * their async forms for many small stats; the scan yields to the event loop between directories.
 */
export async function scanTree(source: string): Promise<TreeSnapshot> {
  let rootStat: Stats;
  try {
    rootStat = lstatSync(source);
  } catch (e) {
    throw new BridgeError('ENOENT', `FAT32 source ${source} cannot be read: ${errorMessage(e)}`, {}, { cause: e });
  }
  if (!rootStat.isDirectory()) throw new BridgeError('EINVAL', `FAT32 source ${source} is not a directory`);
  const root: TreeEntry = entryFromStats(-1, { sourceName: '', mapped: { name: '', mapped: false }, st: rootStat, isDir: true });
  root.attr = ATTR_DIRECTORY;
  const snap: TreeSnapshot = { source, entries: [root], leftOut: [], renamed: [], files: 0, directories: 0, bytes: 0, takenAt: new Date() };
  let lastYield = Date.now();
  for (let d = 0; d < snap.entries.length; d++) {
    if (!snap.entries[d]!.isDir) continue;
    scanDirectory(snap, d);
    if (Date.now() - lastYield > 20) {
      await new Promise((r) => setImmediate(r));
      lastYield = Date.now();
    }
  }
  return snap;
}

function scanDirectory(snap: TreeSnapshot, dirIndex: number): void {
  const rel = entryPath(snap.entries, dirIndex);
  const dirPath = join(snap.source, rel);
  const relOf = (name: string): string => (rel ? `${rel}/${name}` : name);
  const dir = snap.entries[dirIndex]!;
  dir.children = [];
  const isRoot = dirIndex === 0;
  let names: Buffer[];
  try {
    names = readdirSync(dirPath, { encoding: 'buffer' });
  } catch (e) {
    // The directory stays (empty); what it held is reported.
    snap.leftOut.push({ path: rel || '.', reason: `contents not readable: ${errorMessage(e)}` });
    dir.slots = isRoot ? 1 : 2;
    return;
  }
  const candidates: Candidate[] = [];
  for (const raw of names) {
    let sourceName: string;
    try {
      sourceName = utf8.decode(raw);
    } catch {
      snap.leftOut.push({ path: relOf(raw.toString('latin1')), reason: 'name is not valid UTF-8' });
      continue;
    }
    let st: Stats;
    try {
      st = lstatSync(join(dirPath, sourceName));
    } catch (e) {
      snap.leftOut.push({ path: relOf(sourceName), reason: `cannot stat: ${errorMessage(e)}` });
      continue;
    }
    const isDir = st.isDirectory();
    if (!isDir && !st.isFile()) {
      snap.leftOut.push({ path: relOf(sourceName), reason: kindOf(st) });
      continue;
    }
    if (!isDir && st.size > MAX_FILE_SIZE) {
      snap.leftOut.push({ path: relOf(sourceName), reason: `file of ${st.size} bytes: FAT32 files are smaller than 4 GiB` });
      continue;
    }
    const mapped = mapLongName(sourceName);
    if (typeof mapped === 'string') {
      snap.leftOut.push({ path: relOf(sourceName), reason: `name ${mapped}` });
      continue;
    }
    candidates.push({ sourceName, mapped, st, isDir });
  }

  // Rule 5 (names.ts): unmapped names first, then mapped ones, each in code-unit order; first wins.
  const byName = (a: Candidate, b: Candidate): number => (a.sourceName < b.sourceName ? -1 : a.sourceName > b.sourceName ? 1 : 0);
  candidates.sort((a, b) => Number(a.mapped.mapped) - Number(b.mapped.mapped) || byName(a, b));
  const placed = new Map<string, string>();
  const kept: Candidate[] = [];
  for (const c of candidates) {
    const key = foldCase(c.mapped.name);
    const other = placed.get(key);
    if (other !== undefined) {
      snap.leftOut.push({ path: relOf(c.sourceName), reason: `name${c.mapped.mapped ? ` (mapped to "${c.mapped.name}")` : ''} differs only in case from "${other}"` });
      continue;
    }
    placed.set(key, c.sourceName);
    kept.push(c);
  }

  // Short names: exact 8.3 forms are reserved first so generated ~N names avoid them.
  const alloc = new ShortNameAllocator();
  const shorts: ({ base: string; ext: string } | undefined)[] = kept.map((c) => {
    const exact = exactShortName(c.mapped.name);
    return exact && alloc.reserve(exact.base, exact.ext) ? exact : undefined;
  });
  let slot = isRoot ? 1 : 2; // volume label, or `.` and `..`
  for (let i = 0; i < kept.length; i++) {
    const c = kept[i]!;
    let short = shorts[i];
    let lfn = true;
    if (short) lfn = c.mapped.name !== `${short.base}${short.ext ? '.' + short.ext : ''}`;
    else {
      const basis = basisName(c.mapped.name);
      short = alloc.tailed(basis.base, basis.ext);
    }
    const need = (lfn ? lfnSlots(c.mapped.name) : 0) + 1;
    if (slot + need > MAX_DIR_SLOTS) {
      snap.leftOut.push({ path: relOf(c.sourceName), reason: 'directory full: a FAT directory holds at most 65,536 entries' });
      continue;
    }
    const e = entryFromStats(dirIndex, c);
    e.shortName = shortNameField(short.base, short.ext);
    e.lfn = lfn;
    e.slot = slot + need - 1;
    slot += need;
    if (c.mapped.mapped) snap.renamed.push({ path: relOf(c.sourceName), name: c.mapped.name });
    dir.children.push(snap.entries.length);
    snap.entries.push(e);
    if (c.isDir) snap.directories++;
    else {
      snap.files++;
      snap.bytes += e.size;
    }
  }
  dir.slots = slot;
}
