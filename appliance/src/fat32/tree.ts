/**
 * The metadata snapshot: one scan of the source tree into a flat table of entries (directories and
 * regular files), with their FAT names, attributes, times and directory slots. Nothing of the files'
 * contents is read. Entries are numbered in breadth-first order; entry 0 is the root.
 *
 * The table (entries.ts) is what the write path will diff against: each entry keeps its source name
 * and parent, its first cluster and chain length, and the slot of its short entry in the parent.
 */
import { lstatSync, readdirSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import { ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_HIDDEN, ATTR_READ_ONLY } from './dirent.js';
import { EntryTable, FLAG_DIR, FLAG_LFN } from './entries.js';
import { basisName, exactShortName, foldCase, lfnSlots, mapLongName, shortNameField, ShortNameAllocator } from './names.js';

/** A FAT directory holds at most 65,536 entries of 32 bytes (2 MiB). */
export const MAX_DIR_SLOTS = 65_536;
/** FAT file sizes are 32-bit. */
export const MAX_FILE_SIZE = 0xffffffff;

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
  entries: EntryTable;
  leftOut: LeftOut[];
  renamed: Renamed[];
  files: number;
  directories: number;
  /** Sum of file sizes. */
  bytes: number;
  takenAt: Date;
}

/** What the scan keeps of an lstat: only numbers, so Stats objects die young. */
interface StatFields {
  mode: number;
  size: number;
  mtimeMs: number;
  atimeMs: number;
  ctimeMs: number;
  birthtimeMs: number;
  ino: number;
}

interface Candidate {
  sourceName: string;
  mapped: { name: string; mapped: boolean };
  st: StatFields;
  isDir: boolean;
}

function statFields(st: Stats): StatFields {
  return { mode: st.mode, size: st.size, mtimeMs: st.mtimeMs, atimeMs: st.atimeMs, ctimeMs: st.ctimeMs, birthtimeMs: st.birthtimeMs, ino: st.ino };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Relative path of an entry, for reports. */
export function entryPath(entries: EntryTable, index: number): string {
  const parts: string[] = [];
  for (let i = index; i > 0; i = entries.parent[i]!) parts.push(entries.sourceName[i]!);
  return parts.reverse().join('/');
}

/** Absolute source path of an entry. */
export function sourcePath(source: string, entries: EntryTable, index: number): string {
  return join(source, entryPath(entries, index));
}

function kindOf(st: Stats): string {
  if (st.isSymbolicLink()) return 'symbolic link (not followed)';
  if (st.isFIFO()) return 'named pipe (special file)';
  if (st.isSocket()) return 'socket (special file)';
  if (st.isBlockDevice() || st.isCharacterDevice()) return 'device node (special file)';
  return 'unsupported file type';
}

function attrOf(c: Candidate): number {
  let attr = c.isDir ? ATTR_DIRECTORY : ATTR_ARCHIVE;
  if (!c.isDir && (c.st.mode & 0o222) === 0) attr |= ATTR_READ_ONLY;
  if (c.sourceName.startsWith('.')) attr |= ATTR_HIDDEN;
  return attr;
}

function addEntry(table: EntryTable, parent: number, c: Candidate, flags: number, attr: number, slot: number, shortName: string): number {
  const st = c.st;
  return table.add({
    parent,
    flags,
    attr,
    size: c.isDir ? 0 : st.size,
    mtimeMs: st.mtimeMs,
    atimeMs: st.atimeMs,
    // Creation time: the birth time when the file system records one, else the older of mtime and ctime.
    birthtimeMs: st.birthtimeMs > 0 ? st.birthtimeMs : Math.min(st.mtimeMs, st.ctimeMs),
    ino: st.ino,
    slot,
    sourceName: c.sourceName,
    mappedName: c.mapped.mapped ? c.mapped.name : undefined,
    shortName,
  });
}

/**
 * Scans `source` into a snapshot. Synchronous system calls in a loop are several times faster than
 * their async forms for many small stats; the scan yields to the event loop between directories.
 */
export async function scanTree(source: string, options: { skipRootName?: string } = {}): Promise<TreeSnapshot> {
  let rootStat: Stats;
  try {
    rootStat = lstatSync(source);
  } catch (e) {
    throw new BridgeError('ENOENT', `FAT32 source ${source} cannot be read: ${errorMessage(e)}`, {}, { cause: e });
  }
  if (!rootStat.isDirectory()) throw new BridgeError('EINVAL', `FAT32 source ${source} is not a directory`);
  const entries = new EntryTable();
  addEntry(entries, -1, { sourceName: '', mapped: { name: '', mapped: false }, st: statFields(rootStat), isDir: true }, FLAG_DIR, ATTR_DIRECTORY, 0, '');
  const snap: TreeSnapshot = { source, entries, leftOut: [], renamed: [], files: 0, directories: 0, bytes: 0, takenAt: new Date() };
  // Directories waiting to be read, with their relative paths (so no path is rebuilt per entry).
  const queue: { index: number; rel: string }[] = [{ index: 0, rel: '' }];
  let lastYield = Date.now();
  for (let q = 0; q < queue.length; q++) {
    scanDirectory(snap, queue[q]!.index, queue[q]!.rel, queue, options.skipRootName);
    if (Date.now() - lastYield > 20) {
      await new Promise((r) => setImmediate(r));
      lastYield = Date.now();
    }
  }
  return snap;
}

/** The names that are valid UTF-8; the others are reported as left out. */
function validUtf8Names(raw: Buffer[], snap: TreeSnapshot, relOf: (name: string) => string): string[] {
  const out: string[] = [];
  for (const r of raw) {
    try {
      out.push(utf8.decode(r));
    } catch {
      snap.leftOut.push({ path: relOf(r.toString('latin1')), reason: 'name is not valid UTF-8' });
    }
  }
  return out;
}

function scanDirectory(snap: TreeSnapshot, dirIndex: number, rel: string, queue: { index: number; rel: string }[], skipRootName?: string): void {
  const dirPath = join(snap.source, rel);
  const prefix = dirPath.endsWith('/') ? dirPath : dirPath + '/';
  const relOf = (name: string): string => (rel ? `${rel}/${name}` : name);
  const table = snap.entries;
  table.childStart[dirIndex] = table.count;
  table.childCount[dirIndex] = 0;
  const isRoot = dirIndex === 0;
  let names: string[];
  try {
    names = readdirSync(dirPath);
    // Node decodes names as UTF-8 with U+FFFD for invalid bytes; only then look at the raw bytes.
    if (names.some((n) => n.includes('\uFFFD'))) names = validUtf8Names(readdirSync(dirPath, { encoding: 'buffer' }), snap, relOf);
  } catch (e) {
    // The directory stays (empty); what it held is reported.
    snap.leftOut.push({ path: rel || '.', reason: `contents not readable: ${errorMessage(e)}` });
    table.dirSlots[dirIndex] = isRoot ? 1 : 2;
    return;
  }
  const candidates: Candidate[] = [];
  for (const sourceName of names) {
    // The write-back journal inside the source is the agent's own, never part of the volume.
    if (isRoot && sourceName === skipRootName) continue;
    let st: Stats;
    try {
      st = lstatSync(prefix + sourceName);
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
    candidates.push({ sourceName, mapped, st: statFields(st), isDir });
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
      snap.leftOut.push({
        path: relOf(c.sourceName),
        reason: `name${c.mapped.mapped ? ` (mapped to "${c.mapped.name}")` : ''} collides, ignoring case, with "${other}"`,
      });
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
    const flags = (c.isDir ? FLAG_DIR : 0) | (lfn ? FLAG_LFN : 0);
    const index = addEntry(table, dirIndex, c, flags, attrOf(c), slot + need - 1, shortNameField(short.base, short.ext));
    slot += need;
    if (c.mapped.mapped) snap.renamed.push({ path: relOf(c.sourceName), name: c.mapped.name });
    if (c.isDir) {
      queue.push({ index, rel: relOf(c.sourceName) });
      snap.directories++;
    } else {
      snap.files++;
      snap.bytes += c.st.size;
    }
  }
  table.childCount[dirIndex] = table.count - table.childStart[dirIndex]!;
  table.dirSlots[dirIndex] = slot;
}
