/**
 * Decodes the host's view of the volume (synthesized bytes with the overlay on top) into a tree:
 * every directory entry with its long (or short) name, attributes, modification time, first cluster,
 * size and cluster chain, chains followed in FAT 1.
 *
 * Anything a consistent FAT32 volume cannot hold is a *problem*: a chain that loops, crosses another
 * chain, leaves the data area or ends in a free cluster; a file whose chain is shorter than its size;
 * reserved attribute bits; names that are empty, `.`/`..`, contain `/`, NUL or control characters, exceed 255 bytes of
 * UTF-8 or repeat (ignoring case) in one directory. The write-back applies nothing while the parse has
 * problems (docs/fat32.md, "Write path").
 */
import { ATTR_DIRECTORY, ATTR_LFN, ATTR_VOLUME_ID, DIRENT_SIZE } from './dirent.js';
import { clusterOffset, ROOT_CLUSTER, type Geometry } from './layout.js';
import { SparseBitmap } from './bitmap.js';
import { foldCase, lfnChecksum } from './names.js';

/** One directory entry as decoded (what a cached directory keeps). */
interface RawEntry {
  /** Long name, or the short name (with its case flags applied) when there is no valid long name. */
  name: string;
  isDir: boolean;
  attr: number;
  firstCluster: number;
  size: number;
  /** Raw FAT modification date and time words. */
  mdate: number;
  mtime: number;
}

export interface ParsedNode extends RawEntry {
  /** The cluster chain as runs: [start, length, start, length, ...]. */
  runs: number[];
  children: ParsedNode[];
}

export interface ParsedVolume {
  root: ParsedNode;
  problems: string[];
  /** Clusters counted in chains. */
  usedClusters: number;
  /** True when a chain reachable from the root uses `cluster`. */
  reachable(cluster: number): boolean;
  /** FAT 1's entry for `cluster` (28 bits). */
  fatEntry(cluster: number): Promise<number>;
}

export type ReadFn = (target: Buffer, offset: number) => Promise<void>;

const FAT_CHUNK = 64 * 1024;
const FAT_MASK = 0x0fffffff;
const LFN_UNIT_OFFSETS = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/** Reads FAT 1 in 64 KiB chunks, cached for one parse. */
class FatReader {
  private readonly chunks = new Map<number, Buffer>();
  constructor(
    private readonly read: ReadFn,
    private readonly g: Geometry,
  ) {}

  async get(cluster: number): Promise<number> {
    const byte = cluster * 4;
    const chunk = Math.floor(byte / FAT_CHUNK);
    let buf = this.chunks.get(chunk);
    if (!buf) {
      const fatBytes = this.g.fatSectors * 512;
      buf = Buffer.alloc(Math.min(FAT_CHUNK, fatBytes - chunk * FAT_CHUNK));
      await this.read(buf, this.g.fatOffset + chunk * FAT_CHUNK);
      this.chunks.set(chunk, buf);
    }
    return buf.readUInt32LE(byte - chunk * FAT_CHUNK) & FAT_MASK;
  }
}

/** Index of the first run (columns sorted by start, not overlapping) that ends after `x`; the count when none does. */
export function firstRunEndingAfter(start: ArrayLike<number>, length: ArrayLike<number>, x: number): number {
  let lo = 0;
  let hi = start.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (start[mid]! + length[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Number of clusters in a run list. */
export function runClusters(runs: number[]): number {
  let n = 0;
  for (let i = 1; i < runs.length; i += 2) n += runs[i]!;
  return n;
}

/** The cluster at index `k` of a chain given as runs, or undefined past its end. */
export function clusterOfRuns(runs: number[], k: number): number | undefined {
  for (let i = 0; i < runs.length; i += 2) {
    if (k < runs[i + 1]!) return runs[i]! + k;
    k -= runs[i + 1]!;
  }
  return undefined;
}

/** Why a name cannot become a source name, or undefined. */
export function badSourceName(name: string): string | undefined {
  if (name.length === 0) return 'empty name';
  if (name === '.' || name === '..') return `name "${name}"`;
  if (name.includes('/')) return 'name contains "/"';
  if (name.includes('\0')) return 'name contains NUL';
  // eslint-disable-next-line no-control-regex
  if (/[\u0001-\u001f]/.test(name)) return 'name contains a control character (FAT forbids them)';
  if (Buffer.byteLength(name, 'utf8') > 255) return 'name longer than 255 bytes of UTF-8';
  if (/[\uD800-\uDFFF]/.test(name) && !/^(?:[^\uD800-\uDFFF]|[\uD800-\uDBFF][\uDC00-\uDFFF])*$/.test(name)) return 'name holds an unpaired surrogate';
  return undefined;
}

function shortNameOf(b: Buffer, off: number): string {
  const raw = Buffer.from(b.subarray(off, off + 11));
  if (raw[0] === 0x05) raw[0] = 0xe5;
  const flags = b[off + 12]!;
  let base = raw.toString('latin1', 0, 8).trimEnd();
  let ext = raw.toString('latin1', 8, 11).trimEnd();
  // Windows NT and Linux keep all-lower-case 8.3 names in the short entry with these two flags.
  if (flags & 0x08) base = base.toLowerCase();
  if (flags & 0x10) ext = ext.toLowerCase();
  return ext ? `${base}.${ext}` : base;
}

export interface ParseOptions {
  /** A name the root directory must not hold (the write-back journal inside the source), compared ignoring case. */
  reservedRootName?: string;
}

/** A problem: the entry's name (undefined for the directory itself) and what is wrong. */
type Problem = [string | undefined, string];

/** A decoded directory: its entries, and problems of single entries (without the directory's path). */
interface DirState {
  entries: RawEntry[];
  problems: Problem[];
}

/** A followed chain: its runs and, when it is not a clean chain, why (without the entry's path). */
interface ChainState {
  runs: number[];
  problem?: string;
}

/** A directory of the parsed tree, kept between parses. */
interface DirResult {
  parent: number | undefined;
  /** The directory's name in its parent ('' for the root). */
  name: string;
  /** The directory's node; its `children` array is rebuilt when the directory is. */
  node: ParsedNode;
  /** First clusters of its entries (also of those left out for a problem): they are its to own. */
  heads: number[];
  /** Problems of its entries, without the directory's path. */
  problems: Problem[];
}

/**
 * The host's view, parsed incrementally. The parsed tree, decoded directories and followed chains
 * are kept between parses; the volume reports every write (`noteWrite`), and a parse redoes only
 * what a write can have changed: a chain holding a written FAT 1 entry is followed again and the
 * directory holding its entry is rebuilt; a directory holding a written data cluster is decoded
 * again. Directories that did not change keep their nodes and subtrees (a moved directory is
 * reattached, not read). Every chain's runs sit in one sorted index: overlapping runs are
 * cross-linked chains (then the next parse starts from nothing, as the index's order is broken).
 * `rebuilt` says which directories a parse rebuilt: the write-back diffs only those.
 */
export class HostParser {
  private readonly chains = new Map<number, ChainState>();
  private readonly states = new Map<number, DirState>();
  private readonly results = new Map<number, DirResult>();
  /** Entry first cluster → the directory (first cluster) that holds the entry. */
  private readonly ownerDir = new Map<number, number>();
  private readonly dirProblems = new Map<number, Problem[]>();
  /** Runs of every live chain, sorted by start: [start, length, head] columns. */
  private index = { start: new Float64Array(0), length: new Float64Array(0), head: new Float64Array(0) };
  private readonly fatWritten = new SparseBitmap();
  private readonly dataWritten = new SparseBitmap();
  private overlapped = false;
  private root: ParsedNode | undefined;
  /** What the last parse did: directories decoded and chains followed (the rest came from the cache). */
  lastWork = { dirsDecoded: 0, chainsFollowed: 0, dirsRebuilt: 0 };

  constructor(
    private readonly g: Geometry,
    private readonly options: ParseOptions = {},
  ) {}

  /** Records a host write (FAT 1 entries and data clusters it touched). */
  noteWrite(offset: number, length: number): void {
    const g = this.g;
    const end = offset + length;
    const fat1End = g.fatOffset + g.fatSectors * 512;
    if (end > g.fatOffset && offset < fat1End) {
      this.fatWritten.addRange(Math.floor((Math.max(offset, g.fatOffset) - g.fatOffset) / 4), Math.ceil((Math.min(end, fat1End) - g.fatOffset) / 4));
    }
    const dataEnd = Math.min(end, g.dataOffset + g.clusterCount * g.clusterSize);
    if (dataEnd > g.dataOffset && dataEnd > offset) {
      const first = Math.floor((Math.max(offset, g.dataOffset) - g.dataOffset) / g.clusterSize) + ROOT_CLUSTER;
      const last = Math.floor((dataEnd - 1 - g.dataOffset) / g.clusterSize) + ROOT_CLUSTER;
      this.dataWritten.addRange(first, last + 1);
    }
  }

  /** Heads of the live chains that hold a cluster in [from, to). */
  headsIn(from: number, to: number): number[] {
    const ix = this.index;
    const lo = firstRunEndingAfter(ix.start, ix.length, from);
    const out: number[] = [];
    // Sorted by start and not overlapping (a parse that found overlaps leaves no cache: see parse).
    for (let i = lo; i < ix.start.length && ix.start[i]! < to; i++) out.push(ix.head[i]!);
    return out;
  }

  /** The directory (first cluster) holding the entry whose chain starts at `head`. */
  dirOf(head: number): number | undefined {
    return this.ownerDir.get(head);
  }

  /** A live directory's node and its parent directory (undefined for the root). */
  dir(head: number): { node: ParsedNode; parent: number | undefined } | undefined {
    const r = this.results.get(head);
    return r && { node: r.node, parent: r.parent };
  }

  /** Path of a live directory, for messages. */
  private pathOf(head: number): string {
    const parts: string[] = [];
    for (let r = this.results.get(head); r && r.parent !== undefined; r = this.results.get(r.parent)) parts.push(r.name);
    return parts.reverse().join('/');
  }

  private reset(): void {
    this.chains.clear();
    this.states.clear();
    this.results.clear();
    this.ownerDir.clear();
    this.dirProblems.clear();
    this.index = { start: new Float64Array(0), length: new Float64Array(0), head: new Float64Array(0) };
    this.fatWritten.clear();
    this.dataWritten.clear();
    this.overlapped = false;
    this.root = undefined;
  }

  /** Directories to rebuild because of the writes since the last parse (their caches dropped). */
  private invalidate(): Set<number> {
    const dirty = new Set<number>();
    const fr = this.fatWritten.runs();
    for (let i = 0; i < fr.length; i += 2) {
      for (const h of this.headsIn(fr[i]!, fr[i]! + fr[i + 1]!)) {
        this.chains.delete(h);
        this.states.delete(h);
        const owner = this.ownerDir.get(h);
        if (owner !== undefined) dirty.add(owner);
        if (this.results.has(h)) dirty.add(h);
      }
    }
    const dr = this.dataWritten.runs();
    for (let i = 0; i < dr.length; i += 2) {
      for (const h of this.headsIn(dr[i]!, dr[i]! + dr[i + 1]!)) {
        if (!this.results.has(h)) continue;
        this.states.delete(h);
        dirty.add(h);
      }
    }
    this.fatWritten.clear();
    this.dataWritten.clear();
    return dirty;
  }

  /** Parses the host's view; `rebuilt` lists the directories (first clusters) rebuilt by this parse. */
  async parse(read: ReadFn): Promise<ParsedVolume & { rebuilt: number[] }> {
    const g = this.g;
    if (this.overlapped) this.reset();
    const first = !this.root;
    if (first) {
      this.root = { name: '', isDir: true, attr: ATTR_DIRECTORY, firstCluster: ROOT_CLUSTER, size: 0, mdate: 0, mtime: 0, runs: [], children: [] };
      this.results.set(ROOT_CLUSTER, { parent: undefined, name: '', node: this.root, heads: [], problems: [] });
    }
    const dirty = first ? new Set([ROOT_CLUSTER]) : this.invalidate();
    const work = { dirsDecoded: 0, chainsFollowed: 0, dirsRebuilt: 0 };
    const fat = new FatReader(read, g);
    const maxCluster = g.clusterCount + 1;
    const followed = new Set<number>();

    const chainOf = async (head: number): Promise<ChainState> => {
      let ch = this.chains.get(head);
      if (!ch) {
        work.chainsFollowed++;
        followed.add(head);
        ch = await follow(head);
        this.chains.set(head, ch);
      }
      return ch;
    };
    /** Follows a chain; a loop shows as a cluster seen twice. */
    const follow = async (start: number): Promise<ChainState> => {
      const runs: number[] = [];
      const seen = new SparseBitmap();
      let c = start;
      for (;;) {
        if (c < ROOT_CLUSTER || c > maxCluster) return { runs, problem: `chain reaches cluster ${c}, outside the data area` };
        if (seen.has(c)) return { runs, problem: `chain loops or is cross-linked at cluster ${c}` };
        seen.add(c);
        const n = runs.length;
        if (n > 0 && runs[n - 2]! + runs[n - 1]! === c) runs[n - 1]!++;
        else runs.push(c, 1);
        const next = await fat.get(c);
        if (next >= 0x0ffffff8) return { runs };
        if (next === 0x0ffffff7) return { runs, problem: `chain reaches a bad cluster after ${c}` };
        if (next === 0) return { runs, problem: `chain ends in a free cluster after ${c}` };
        c = next;
      }
    };

    // Rebuild the dirty directories (new ones found on the way join the queue).
    const queue = [...dirty];
    const removed: [number, number][] = [];
    const added: [number, number][] = [];
    const crossLinks: string[] = [];
    /** Chains that held a directory and now hold a file. */
    const demoted: number[] = [];
    const rebuilt: number[] = [];
    for (let q = 0; q < queue.length; q++) {
      const h = queue[q]!;
      const res = this.results.get(h);
      if (!res) continue; // went away with a directory rebuilt before it
      rebuilt.push(h);
      work.dirsRebuilt++;
      const problems: Problem[] = [];
      const heads: number[] = [];
      const children: ParsedNode[] = [];
      const ch = await chainOf(h);
      if (h === ROOT_CLUSTER) res.node.runs = ch.runs;
      if (ch.problem) problems.push([undefined, ch.problem]);
      else {
        let state = this.states.get(h);
        if (!state) {
          work.dirsDecoded++;
          state = await this.decode(read, ch.runs, h === ROOT_CLUSTER);
          this.states.set(h, state);
        }
        problems.push(...state.problems);
        const own = new Set<number>();
        for (const e of state.entries) {
          const node: ParsedNode = { ...e, runs: [], children: [] };
          if (e.isDir || e.firstCluster !== 0) {
            if (e.isDir && e.firstCluster === 0) {
              problems.push([e.name, 'directory without a cluster']);
              continue;
            }
            if (own.has(e.firstCluster) || e.firstCluster === ROOT_CLUSTER) {
              problems.push([e.name, `chain cross-linked at cluster ${e.firstCluster}`]);
              this.overlapped = true;
              continue;
            }
            own.add(e.firstCluster);
            heads.push(e.firstCluster);
            const c = await chainOf(e.firstCluster);
            if (c.problem) {
              problems.push([e.name, c.problem]);
              continue;
            }
            node.runs = c.runs;
          }
          if (!e.isDir && e.size > runClusters(node.runs) * g.clusterSize) {
            problems.push([e.name, `size ${e.size} is larger than its chain of ${runClusters(node.runs)} clusters`]);
            continue;
          }
          if (!e.isDir && this.results.has(e.firstCluster)) demoted.push(e.firstCluster);
          if (e.isDir) {
            const sub = this.results.get(e.firstCluster);
            if (sub) {
              // A directory known from before (here or moved in): its subtree is reused or rebuilt.
              node.children = sub.node.children;
              sub.node = node;
              sub.parent = h;
              sub.name = e.name;
            } else {
              this.results.set(e.firstCluster, { parent: h, name: e.name, node, heads: [], problems: [] });
              dirty.add(e.firstCluster);
              queue.push(e.firstCluster);
            }
          }
          children.push(node);
        }
      }
      const before = new Set(res.heads);
      const now = new Set(heads);
      for (const x of before) if (!now.has(x)) removed.push([x, h]);
      for (const x of now) if (!before.has(x)) added.push([x, h]);
      res.heads = heads;
      res.node.children = children;
      if (problems.length) this.dirProblems.set(h, problems);
      else this.dirProblems.delete(h);
    }
    // Ownership: moves leave one directory and join another in the same parse.
    for (const [x, from] of removed) if (this.ownerDir.get(x) === from) this.ownerDir.delete(x);
    for (const [x, to] of added) {
      const owner = this.ownerDir.get(x);
      if (owner !== undefined && owner !== to && this.results.get(owner)?.heads.includes(x)) {
        crossLinks.push(`${this.pathOf(to) || '/'}: an entry's chain is cross-linked with one in ${this.pathOf(owner) || '/'} at cluster ${x}`);
        this.overlapped = true;
      } else this.ownerDir.set(x, to);
    }
    // What no directory holds any more goes, with the subtrees of directories.
    const gone = new Set<number>();
    /** Forgets directory x's result and what only it held. */
    const forgetDir = (x: number): void => {
      const r = this.results.get(x);
      if (!r) return;
      this.results.delete(x);
      this.states.delete(x);
      this.dirProblems.delete(x);
      for (const y of r.heads) {
        if (this.ownerDir.get(y) === x) this.ownerDir.delete(y);
        drop(y);
      }
    };
    const drop = (x: number): void => {
      if (this.ownerDir.has(x) || gone.has(x)) return;
      gone.add(x);
      this.chains.delete(x);
      forgetDir(x);
    };
    for (const [x] of removed) drop(x);
    for (const x of demoted) forgetDir(x);
    for (const x of dirty) if (!this.results.has(x)) gone.add(x);
    this.updateIndex(followed, gone);
    const problems: string[] = [...crossLinks];
    for (const [h, ps] of this.dirProblems) {
      const path = this.pathOf(h);
      for (const [entry, msg] of ps) problems.push(entry === undefined ? `${path || '/'}: ${msg}` : `${path ? `${path}/` : ''}${entry}: ${msg}`);
    }
    const ix = this.index;
    let usedClusters = 0;
    for (let i = 0; i < ix.length.length; i++) {
      usedClusters += ix.length[i]!;
      if (i > 0 && ix.start[i - 1]! + ix.length[i - 1]! > ix.start[i]!) {
        this.overlapped = true;
        problems.push(`chain loops or is cross-linked at cluster ${ix.start[i]} (chains starting at ${ix.head[i - 1]} and ${ix.head[i]})`);
      }
    }
    this.lastWork = work;
    return {
      root: this.root!,
      problems,
      usedClusters,
      reachable: (c) => this.headsIn(c, c + 1).length > 0,
      fatEntry: (c) => fat.get(c),
      rebuilt,
    };
  }

  /** The index without the rows of changed or gone chains, with the changed chains' new rows merged in. */
  private updateIndex(followed: Set<number>, gone: Set<number>): void {
    const old = this.index;
    const keep: number[] = [];
    for (let i = 0; i < old.start.length; i++) {
      const h = old.head[i]!;
      if (!followed.has(h) && !gone.has(h)) keep.push(i);
    }
    const fresh: [number, number, number][] = [];
    for (const h of followed) {
      if (gone.has(h)) continue;
      const ch = this.chains.get(h);
      if (ch) for (let i = 0; i < ch.runs.length; i += 2) fresh.push([ch.runs[i]!, ch.runs[i + 1]!, h]);
    }
    fresh.sort((a, b) => a[0] - b[0]);
    const n = keep.length + fresh.length;
    const start = new Float64Array(n);
    const length = new Float64Array(n);
    const head = new Float64Array(n);
    let a = 0;
    let b = 0;
    for (let k = 0; k < n; k++) {
      if (b >= fresh.length || (a < keep.length && old.start[keep[a]!]! <= fresh[b]![0])) {
        const i = keep[a++]!;
        start[k] = old.start[i]!;
        length[k] = old.length[i]!;
        head[k] = old.head[i]!;
      } else {
        const [s, l, h] = fresh[b++]!;
        start[k] = s;
        length[k] = l;
        head[k] = h;
      }
    }
    this.index = { start, length, head };
  }

  /** Decodes a directory's clusters: entries with their long (or short) names, and per-entry problems. */
  private async decode(read: ReadFn, runs: number[], isRoot: boolean): Promise<DirState> {
    const g = this.g;
    const entries: RawEntry[] = [];
    const problems: Problem[] = [];
    const seen = new Set<string>();
    const clusterBuf = Buffer.alloc(g.clusterSize);
    let lfn: { units: string[]; sum: number; expect: number } | undefined;
    let ended = false;
    for (let r = 0; r < runs.length && !ended; r += 2) {
      for (let c = runs[r]!; c < runs[r]! + runs[r + 1]! && !ended; c++) {
        await read(clusterBuf, clusterOffset(g, c));
        for (let off = 0; off < g.clusterSize; off += DIRENT_SIZE) {
          const first = clusterBuf[off]!;
          if (first === 0x00) {
            ended = true;
            break;
          }
          if (first === 0xe5) {
            lfn = undefined;
            continue;
          }
          const attr = clusterBuf[off + 11]!;
          if ((attr & 0x3f) === ATTR_LFN) {
            const ord = first & 0x1f;
            const sum = clusterBuf[off + 13]!;
            if (first & 0x40) lfn = ord >= 1 && ord <= 20 ? { units: new Array<string>(ord).fill(''), sum, expect: ord } : undefined;
            else if (!lfn || ord !== lfn.expect - 1 || sum !== lfn.sum) lfn = undefined;
            else lfn.expect = ord;
            if (lfn) {
              let s = '';
              for (const u of LFN_UNIT_OFFSETS) {
                const unit = clusterBuf.readUInt16LE(off + u);
                if (unit === 0x0000 || unit === 0xffff) break;
                s += String.fromCharCode(unit);
              }
              lfn.units[ord - 1] = s;
            }
            continue;
          }
          let long: string | undefined;
          if (lfn && lfn.expect === 1 && lfnChecksum(clusterBuf.subarray(off, off + 11)) === lfn.sum) long = lfn.units.join('');
          lfn = undefined;
          if (attr & ATTR_VOLUME_ID) continue; // the label (or garbage marked as one): no file
          const short = shortNameOf(clusterBuf, off);
          if (short === '.' || short === '..') continue;
          const name = long ?? short;
          const bad = badSourceName(name);
          if (bad) {
            problems.push([undefined, `entry with ${bad}`]);
            continue;
          }
          if (attr & 0xc0) {
            problems.push([name, `reserved attribute bits set (0x${attr.toString(16)})`]);
            continue;
          }
          const key = foldCase(name);
          if (seen.has(key)) {
            problems.push([name, 'name repeated (ignoring case) in one directory']);
            continue;
          }
          seen.add(key);
          if (isRoot && this.options.reservedRootName && key === foldCase(this.options.reservedRootName)) {
            problems.push([name, 'name reserved for the write-back journal']);
            continue;
          }
          const isDir = (attr & ATTR_DIRECTORY) !== 0;
          entries.push({
            name,
            isDir,
            attr,
            firstCluster: ((clusterBuf.readUInt16LE(off + 20) << 16) | clusterBuf.readUInt16LE(off + 26)) >>> 0,
            size: isDir ? 0 : clusterBuf.readUInt32LE(off + 28),
            mtime: clusterBuf.readUInt16LE(off + 22),
            mdate: clusterBuf.readUInt16LE(off + 24),
          });
        }
      }
    }
    return { entries, problems };
  }
}

/** A full parse with nothing cached (for checks: an incremental parse must give the same tree). */
export function parseVolume(read: ReadFn, g: Geometry, options: ParseOptions = {}): Promise<ParsedVolume> {
  return new HostParser(g, options).parse(read);
}
