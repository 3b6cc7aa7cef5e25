/**
 * The FAT as runs of consecutive clusters, never as one object per cluster: each run belongs to one
 * entry, starts `base` bytes into that entry's data, and continues at `next` (the first cluster of
 * the entry's following run, or end-of-chain). A snapshot gives every entry one run; the write path
 * can give an entry several (fragmented chains) without changing how FAT sectors are generated.
 */
import { ROOT_CLUSTER, type Geometry } from './layout.js';
import type { EntryTable } from './entries.js';

export const FAT_EOC = 0x0fffffff;
/** FAT[0]: media byte 0xF8 in the low byte; FAT[1]: end-of-chain with the clean-shutdown and no-error bits set. */
const FAT0 = 0x0ffffff8;
const FAT1 = 0x0fffffff;

export class ClusterMap {
  /** Sorted by start. */
  readonly start: Uint32Array;
  readonly length: Uint32Array;
  readonly next: Uint32Array;
  readonly owner: Int32Array;
  readonly base: Float64Array;
  readonly usedClusters: number;

  /** Columns of runs sorted by start and not overlapping (see `fromRuns` for a list of objects). */
  constructor(columns: { start: Uint32Array; length: Uint32Array; next: Uint32Array; owner: Int32Array; base: Float64Array }) {
    this.start = columns.start;
    this.length = columns.length;
    this.next = columns.next;
    this.owner = columns.owner;
    this.base = columns.base;
    let used = 0;
    for (let i = 0; i < this.length.length; i++) used += this.length[i]!;
    this.usedClusters = used;
  }

  static fromRuns(runs: { start: number; length: number; next: number; owner: number; base: number }[]): ClusterMap {
    const sorted = [...runs].sort((a, b) => a.start - b.start);
    return new ClusterMap({
      start: Uint32Array.from(sorted, (r) => r.start),
      length: Uint32Array.from(sorted, (r) => r.length),
      next: Uint32Array.from(sorted, (r) => r.next),
      owner: Int32Array.from(sorted, (r) => r.owner),
      base: Float64Array.from(sorted, (r) => r.base),
    });
  }

  get runs(): number {
    return this.start.length;
  }

  /** Index of the first run that ends after `cluster` (runs.length when none). */
  firstRunEndingAfter(cluster: number): number {
    let lo = 0;
    let hi = this.start.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.start[mid]! + this.length[mid]! <= cluster) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The run holding `cluster`, or -1 when the cluster is free (or not a data cluster). */
  runOf(cluster: number): number {
    const i = this.firstRunEndingAfter(cluster);
    return i < this.start.length && this.start[i]! <= cluster ? i : -1;
  }

  /** Owner entry of a cluster and the byte offset of the cluster's first byte in the owner's data; undefined when free. */
  lookup(cluster: number, clusterSize: number): { entry: number; offset: number } | undefined {
    const i = this.runOf(cluster);
    if (i < 0) return undefined;
    return { entry: this.owner[i]!, offset: this.base[i]! + (cluster - this.start[i]!) * clusterSize };
  }

  /** The cluster holding byte `offset` of an entry's data, following its chain from `firstCluster`; undefined past the chain's end. */
  clusterAt(firstCluster: number, offset: number, clusterSize: number): number | undefined {
    for (let c = firstCluster; c >= ROOT_CLUSTER && c < FAT_EOC;) {
      const i = this.runOf(c);
      if (i < 0) return undefined;
      const runBytes = (this.start[i]! + this.length[i]! - c) * clusterSize;
      const at = offset - (this.base[i]! + (c - this.start[i]!) * clusterSize);
      if (at < runBytes) return c + Math.floor(at / clusterSize);
      c = this.next[i]!;
    }
    return undefined;
  }

  /** The first cluster no run uses, or 0xFFFFFFFF when the volume is full. */
  firstFree(clusterCount: number): number {
    let c = ROOT_CLUSTER;
    const start = this.start;
    const length = this.length;
    for (let i = 0; i < start.length && start[i] === c; i++) c += length[i]!;
    return c < clusterCount + ROOT_CLUSTER ? c : 0xffffffff;
  }

  /**
   * Fills `target` with FAT bytes starting `fatByte` bytes into a FAT: 4 bytes per cluster number,
   * free clusters and the padding after the last cluster read as zero.
   */
  fillFat(target: Uint8Array, fatByte: number): void {
    target.fill(0);
    if (LITTLE_ENDIAN && fatByte % 4 === 0 && target.byteOffset % 4 === 0 && target.length % 4 === 0) return this.fillFatAligned(target, fatByte / 4);
    const view = new DataView(target.buffer, target.byteOffset, target.byteLength);
    // Whole 4-byte entries overlapping the request; partial ones go through a scratch entry.
    const firstEntry = Math.floor(fatByte / 4);
    const lastEntry = Math.floor((fatByte + target.length - 1) / 4);
    const put = (cluster: number, value: number): void => {
      const at = cluster * 4 - fatByte;
      if (at >= 0 && at + 4 <= target.length) view.setUint32(at, value, true);
      else {
        for (let k = 0; k < 4; k++) {
          const p = at + k;
          if (p >= 0 && p < target.length) target[p] = (value >>> (8 * k)) & 0xff;
        }
      }
    };
    if (firstEntry <= 0) put(0, FAT0);
    if (firstEntry <= 1 && lastEntry >= 1) put(1, FAT1);
    for (let i = this.firstRunEndingAfter(Math.max(firstEntry, ROOT_CLUSTER)); i < this.start.length; i++) {
      const s = this.start[i]!;
      if (s > lastEntry) break;
      const end = s + this.length[i]!; // exclusive
      const from = Math.max(s, firstEntry);
      const to = Math.min(end - 1, lastEntry);
      for (let c = from; c <= to; c++) put(c, c === end - 1 ? this.next[i]! : c + 1);
    }
  }

  /** fillFat for whole, aligned entries (every sector-sized read): one typed-array store per entry. */
  private fillFatAligned(target: Uint8Array, firstEntry: number): void {
    const u32 = new Uint32Array(target.buffer, target.byteOffset, target.length / 4);
    const lastEntry = firstEntry + u32.length - 1;
    if (firstEntry === 0) u32[0] = FAT0;
    if (firstEntry <= 1 && lastEntry >= 1) u32[1 - firstEntry] = FAT1;
    for (let i = this.firstRunEndingAfter(Math.max(firstEntry, ROOT_CLUSTER)); i < this.start.length; i++) {
      const s = this.start[i]!;
      if (s > lastEntry) break;
      const end = s + this.length[i]!; // exclusive
      const to = Math.min(end - 1, lastEntry);
      // Entry c holds c + 1 (the chain runs on), the run's last entry its `next`.
      for (let c = Math.max(s, firstEntry); c < to; c++) u32[c - firstEntry] = c + 1;
      u32[to - firstEntry] = to === end - 1 ? this.next[i]! : to + 1;
    }
  }
}

/** Typed arrays use the host's byte order; FAT entries are little-endian. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Clusters an entry needs: directories at least one (for `.` and `..`), files ceil(size / cluster). */
export function clustersNeeded(t: EntryTable, i: number, clusterSize: number): number {
  if (t.isDir(i)) return Math.max(1, Math.ceil((t.dirSlots[i]! * 32) / clusterSize));
  return Math.ceil(t.size[i]! / clusterSize);
}

/** Total clusters the tree needs with a cluster size. */
export function treeClusters(t: EntryTable, clusterSize: number): number {
  let n = 0;
  for (let i = 0; i < t.count; i++) n += clustersNeeded(t, i, clusterSize);
  return n;
}

/**
 * Lays the snapshot out: the root at cluster 2, then every other directory (breadth-first), then
 * files in entry order, each as one contiguous run. Sets each entry's firstCluster and clusters.
 */
export function allocateClusters(t: EntryTable, g: Geometry): ClusterMap {
  // At most one run per entry, allocated in increasing cluster order: columns fill in sorted.
  const start = new Uint32Array(t.count);
  const length = new Uint32Array(t.count);
  const owner = new Int32Array(t.count);
  let runs = 0;
  let c = ROOT_CLUSTER;
  const place = (i: number): void => {
    const n = clustersNeeded(t, i, g.clusterSize);
    t.clusters[i] = n;
    t.firstCluster[i] = n > 0 ? c : 0;
    if (n === 0) return;
    start[runs] = c;
    length[runs] = n;
    owner[runs] = i;
    runs++;
    c += n;
  };
  for (let i = 0; i < t.count; i++) if (t.isDir(i)) place(i);
  for (let i = 0; i < t.count; i++) if (!t.isDir(i)) place(i);
  return new ClusterMap({
    start: start.slice(0, runs),
    length: length.slice(0, runs),
    next: new Uint32Array(runs).fill(FAT_EOC),
    owner: owner.slice(0, runs),
    base: new Float64Array(runs),
  });
}
