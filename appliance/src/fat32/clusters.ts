/**
 * The FAT as runs of consecutive clusters, never as one object per cluster: each run belongs to one
 * entry, starts `base` bytes into that entry's data, and continues at `next` (the first cluster of
 * the entry's following run, or end-of-chain). A snapshot gives every entry one run; the write path
 * can give an entry several (fragmented chains) without changing how FAT sectors are generated.
 */
import { ROOT_CLUSTER, type Geometry } from './layout.js';
import type { TreeEntry } from './tree.js';

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

  constructor(runs: { start: number; length: number; next: number; owner: number; base: number }[]) {
    runs.sort((a, b) => a.start - b.start);
    const n = runs.length;
    this.start = new Uint32Array(n);
    this.length = new Uint32Array(n);
    this.next = new Uint32Array(n);
    this.owner = new Int32Array(n);
    this.base = new Float64Array(n);
    let used = 0;
    runs.forEach((r, i) => {
      this.start[i] = r.start;
      this.length[i] = r.length;
      this.next[i] = r.next;
      this.owner[i] = r.owner;
      this.base[i] = r.base;
      used += r.length;
    });
    this.usedClusters = used;
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

  /** The first cluster no run uses, or 0xFFFFFFFF when the volume is full. */
  firstFree(clusterCount: number): number {
    let c = ROOT_CLUSTER;
    for (let i = 0; i < this.start.length && this.start[i] === c; i++) c += this.length[i]!;
    return c < clusterCount + ROOT_CLUSTER ? c : 0xffffffff;
  }

  /**
   * Fills `target` with FAT bytes starting `fatByte` bytes into a FAT: 4 bytes per cluster number,
   * free clusters and the padding after the last cluster read as zero.
   */
  fillFat(target: Uint8Array, fatByte: number): void {
    const view = new DataView(target.buffer, target.byteOffset, target.byteLength);
    target.fill(0);
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
}

/** Clusters an entry needs: directories at least one (for `.` and `..`), files ceil(size / cluster). */
export function clustersNeeded(e: TreeEntry, clusterSize: number): number {
  if (e.isDir) return Math.max(1, Math.ceil((e.slots! * 32) / clusterSize));
  return Math.ceil(e.size / clusterSize);
}

/** Total clusters the tree needs with a cluster size. */
export function treeClusters(entries: readonly TreeEntry[], clusterSize: number): number {
  let n = 0;
  for (const e of entries) n += clustersNeeded(e, clusterSize);
  return n;
}

/**
 * Lays the snapshot out: the root at cluster 2, then every other directory (breadth-first), then
 * files in entry order, each as one contiguous run. Sets each entry's firstCluster and clusters.
 */
export function allocateClusters(entries: TreeEntry[], g: Geometry): ClusterMap {
  const runs: { start: number; length: number; next: number; owner: number; base: number }[] = [];
  let c = ROOT_CLUSTER;
  const place = (i: number): void => {
    const e = entries[i]!;
    const n = clustersNeeded(e, g.clusterSize);
    e.clusters = n;
    e.firstCluster = n > 0 ? c : 0;
    if (n > 0) runs.push({ start: c, length: n, next: FAT_EOC, owner: i, base: 0 });
    c += n;
  };
  entries.forEach((e, i) => e.isDir && place(i));
  entries.forEach((e, i) => !e.isDir && place(i));
  return new ClusterMap(runs);
}
