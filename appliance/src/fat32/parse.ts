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
import { foldCase, lfnChecksum } from './names.js';

export interface ParsedNode {
  /** Long name, or the short name (with its case flags applied) when there is no valid long name. */
  name: string;
  isDir: boolean;
  attr: number;
  firstCluster: number;
  size: number;
  /** Raw FAT modification date and time words. */
  mdate: number;
  mtime: number;
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

export async function parseVolume(read: ReadFn, g: Geometry, options: ParseOptions = {}): Promise<ParsedVolume> {
  const fat = new FatReader(read, g);
  const problems: string[] = [];
  const used = new Uint8Array(Math.ceil((g.clusterCount + 2) / 8));
  let usedClusters = 0;
  const maxCluster = g.clusterCount + 1;

  /** Follows a chain from `first`, marking its clusters used; a problem string when it is not a clean chain. */
  const follow = async (first: number, path: string): Promise<number[] | string> => {
    const runs: number[] = [];
    let c = first;
    for (;;) {
      if (c < ROOT_CLUSTER || c > maxCluster) return `${path}: chain reaches cluster ${c}, outside the data area`;
      if (used[c >> 3]! & (1 << (c & 7))) return `${path}: chain loops or is cross-linked at cluster ${c}`;
      used[c >> 3]! |= 1 << (c & 7);
      usedClusters++;
      const n = runs.length;
      if (n > 0 && runs[n - 2]! + runs[n - 1]! === c) runs[n - 1]!++;
      else runs.push(c, 1);
      const next = await fat.get(c);
      if (next >= 0x0ffffff8) return runs;
      if (next === 0x0ffffff7) return `${path}: chain reaches a bad cluster after ${c}`;
      if (next === 0) return `${path}: chain ends in a free cluster after ${c}`;
      c = next;
    }
  };

  const root: ParsedNode = { name: '', isDir: true, attr: ATTR_DIRECTORY, firstCluster: ROOT_CLUSTER, size: 0, mdate: 0, mtime: 0, runs: [], children: [] };
  const rootRuns = await follow(ROOT_CLUSTER, '/');
  const reachable = (c: number): boolean => c >= ROOT_CLUSTER && c <= maxCluster && (used[c >> 3]! & (1 << (c & 7))) !== 0;
  const fatEntry = (c: number): Promise<number> => fat.get(c);
  if (typeof rootRuns === 'string') return { root, problems: [rootRuns], usedClusters, reachable, fatEntry };
  root.runs = rootRuns;
  const queue: { node: ParsedNode; path: string }[] = [{ node: root, path: '' }];
  const clusterBuf = Buffer.alloc(g.clusterSize);
  for (let q = 0; q < queue.length; q++) {
    const { node: dir, path } = queue[q]!;
    const seen = new Set<string>();
    let lfn: { units: string[]; sum: number; expect: number } | undefined;
    let ended = false;
    for (let r = 0; r < dir.runs.length && !ended; r += 2) {
      for (let c = dir.runs[r]!; c < dir.runs[r]! + dir.runs[r + 1]! && !ended; c++) {
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
          const where = path ? `${path}/${name}` : name;
          const bad = badSourceName(name);
          if (bad) {
            problems.push(`${path || '/'}: entry with ${bad}`);
            continue;
          }
          if (attr & 0xc0) {
            problems.push(`${where}: reserved attribute bits set (0x${attr.toString(16)})`);
            continue;
          }
          const key = foldCase(name);
          if (seen.has(key)) {
            problems.push(`${where}: name repeated (ignoring case) in one directory`);
            continue;
          }
          seen.add(key);
          if (!path && options.reservedRootName && key === foldCase(options.reservedRootName)) {
            problems.push(`${where}: name reserved for the write-back journal`);
            continue;
          }
          const isDir = (attr & ATTR_DIRECTORY) !== 0;
          const node: ParsedNode = {
            name,
            isDir,
            attr,
            firstCluster: (clusterBuf.readUInt16LE(off + 20) << 16) | clusterBuf.readUInt16LE(off + 26),
            size: isDir ? 0 : clusterBuf.readUInt32LE(off + 28),
            mtime: clusterBuf.readUInt16LE(off + 22),
            mdate: clusterBuf.readUInt16LE(off + 24),
            runs: [],
            children: [],
          };
          node.firstCluster >>>= 0;
          if (isDir || node.firstCluster !== 0) {
            if (isDir && node.firstCluster === 0) {
              problems.push(`${where}: directory without a cluster`);
              continue;
            }
            const runs = await follow(node.firstCluster, where);
            if (typeof runs === 'string') {
              problems.push(runs);
              continue;
            }
            node.runs = runs;
          }
          if (!isDir && node.size > runClusters(node.runs) * g.clusterSize) {
            problems.push(`${where}: size ${node.size} is larger than its chain of ${runClusters(node.runs)} clusters`);
            continue;
          }
          dir.children.push(node);
          if (isDir) queue.push({ node, path: where });
        }
      }
    }
  }
  return { root, problems, usedClusters, reachable, fatEntry };
}
