/**
 * The diff of the write path: the *applied view* (what the source holds, as the volume last showed
 * it) against the host's current view (parse.ts) gives a plan of operations on the source (apply.ts).
 *
 * Matching: an entry with a cluster chain is the same entry as the applied one with the same first
 * cluster (a file and a directory never match each other); an empty file (no cluster) matches the
 * empty file of the same name (ignoring case) in the matched parent directory. Then:
 * - matched, in another directory or under another name → move (the source name is kept while the
 *   volume name is unchanged, so mapped names such as `a:b` shown as `a_b` survive moves);
 * - not matched in the applied view → deleted (unlink, rmdir deepest first);
 * - not matched in the host's view → created (mkdir, or the file's bytes staged and renamed in);
 * - matched files: data of clusters the host wrote since the last apply, of clusters past the longest
 *   common prefix of the old and new chains, and of the old last cluster when the file grew, is
 *   written at its file offset; a changed size truncates or extends; a changed modification time or
 *   read-only attribute is set.
 * Moves go through a parking place in the journal directory (vacate deepest first, then place in
 * breadth-first order), so swaps and moves into new directories need no ordering puzzle.
 *
 * Changes by someone else: before deleting a file or changing its data, the source file must still be
 * what the write-back last saw (inode, size, mtime); otherwise the host's change to it is refused and
 * reported as a conflict (the host keeps seeing its version in the overlay). A new or moved entry
 * whose place in the source is taken by something the volume does not show holds the whole plan.
 */
import { promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Op } from './apply.js';
import type { SparseBitmap } from './bitmap.js';
import { ATTR_READ_ONLY, fatTime } from './dirent.js';
import type { EntryTable } from './entries.js';
import type { Journal } from './journal.js';
import { clusterOffset, ROOT_CLUSTER, type Geometry } from './layout.js';
import { foldCase } from './names.js';
import type { ParsedNode, ReadFn } from './parse.js';

export interface Ident {
  ino: number;
  size: number;
  mtimeMs: number;
}

/** One entry of the applied view. */
export interface VNode {
  /** Name on the volume. */
  name: string;
  /** Name in the source (differs from `name` for mapped names). */
  src: string;
  isDir: boolean;
  parent: VNode | undefined;
  /** Children by case-folded volume name. */
  children: Map<string, VNode>;
  firstCluster: number;
  runs: number[];
  size: number;
  mdate: number;
  mtime: number;
  attr: number;
  /** The snapshot entry whose synthesized clusters hold this file's original data, or -1. */
  snap: number;
  /** The source file as the write-back last saw it (files only). */
  ident: Ident | undefined;
  /** Set on a parked orphan (no parent): where it lies in the journal directory. */
  parkedAt?: string;
  /** Set once a plan's commit replaced this node by another (same entry, new state): follow it. */
  replacedBy?: VNode;
  /** Set once the entry left the applied view (deleted, or kept in the source for a conflict). */
  gone?: boolean;
}

/** The node that stands for `n` now (nodes are replaced, not changed, when a plan commits). */
export function current(n: VNode): VNode {
  let v = n;
  while (v.replacedBy) v = v.replacedBy;
  return v;
}

/** The applied view at start: the snapshot itself. */
export function viewFromSnapshot(t: EntryTable): VNode {
  const nodes: VNode[] = new Array<VNode>(t.count);
  for (let i = 0; i < t.count; i++) {
    const ft = fatTime(t.mtimeMs[i]!);
    const isDir = t.isDir(i);
    const n: VNode = {
      name: t.name(i),
      src: t.sourceName[i]!,
      isDir,
      parent: i === 0 ? undefined : nodes[t.parent[i]!],
      children: new Map(),
      firstCluster: i === 0 ? ROOT_CLUSTER : t.firstCluster[i]!,
      runs: t.clusters[i]! > 0 ? [t.firstCluster[i]!, t.clusters[i]!] : [],
      size: t.size[i]!,
      mdate: ft.date,
      mtime: ft.time,
      attr: t.attr[i]!,
      snap: isDir ? -1 : i,
      ident: isDir ? undefined : { ino: t.ino[i]!, size: t.size[i]!, mtimeMs: t.mtimeMs[i]! },
    };
    nodes[i] = n;
    if (n.parent) n.parent.children.set(foldCase(n.name), n);
  }
  return nodes[0]!;
}

/** Source path of a node relative to the source root (for a parked orphan, relative to its parking place). */
export function relPath(n: VNode): string {
  const parts: string[] = [];
  for (let v: VNode | undefined = n; v?.parent; v = v.parent) parts.push(v.src);
  return parts.reverse().join('/');
}

/** Absolute path of a node: in the source tree, or under its parked ancestor in the journal directory. */
export function nodePath(n: VNode, sourceRoot: string): string {
  let top = n;
  while (top.parent) top = top.parent;
  const rel = relPath(n);
  const base = top.parkedAt ?? sourceRoot;
  return rel ? join(base, rel) : base;
}

function depth(n: VNode): number {
  let d = 0;
  for (let v = n.parent; v; v = v.parent) d++;
  return d;
}

/** Local time of a FAT date and time (2-second resolution). */
export function fatToMs(date: number, time: number): number {
  return new Date((date >> 9) + 1980, ((date >> 5) & 15) - 1, date & 31, time >> 11, (time >> 5) & 63, (time & 31) * 2).getTime();
}

export interface PlanInput {
  /** The applied view's root. */
  old: VNode;
  /** Applied entries with a first cluster (in the tree and parked), by first cluster; updated by `commit`. */
  byHead: Map<number, VNode>;
  /** Host directories (first clusters) whose entries may differ from the applied view. */
  changed: Iterable<number>;
  /** The host's parsed directories. */
  host: { dir(head: number): { node: ParsedNode; parent: number | undefined } | undefined };
  g: Geometry;
  /** Data clusters written since the last apply. */
  dirty: SparseBitmap;
  /** Reads the host's view (overlay over synthesized bytes). */
  read: ReadFn;
  journal: Journal;
  sourceRoot: string;
  /** Entries parked by earlier plans (see `lost`). */
  orphans: VNode[];
  /**
   * True when the host's FAT still allocates `cluster` but no entry reaches it (a lost chain). An
   * applied entry whose first cluster is lost is parked, not deleted: hosts such as Linux vfat write
   * the directory sector that drops an entry before the one that adds it back (a move), so a
   * flush in between sees the entry gone while its data is still allocated.
   */
  lost: (cluster: number) => Promise<boolean>;
}

export interface PlanResult {
  ops: Op[];
  /** The applied view once the plan ran. */
  root: VNode;
  conflicts: { path: string; detail: string }[];
  /** Set when nothing may be applied (with why). */
  hold?: string;
  /** Nodes whose source file must be stat'ed after the plan (new or changed files). */
  restat: VNode[];
  /** Snapshot entries whose source file changed or went away. */
  touchedSnaps: number[];
  /** Parked entries after the plan (each with `parkedAt`, no parent). */
  orphans: VNode[];
  /** Entries parked by this plan: [volume path, parking path]. */
  parked: [string, string][];
  /** Files whose data the source holds as the host's view shows it once the plan ran (not conflicts). */
  settled: VNode[];
  /** Applied entries the new view no longer holds (deleted, or kept in the source for a conflict). */
  deletedNodes: VNode[];
  /** Makes the new view the applied one (call once the plan ran): nodes replaced, `byHead` updated. */
  commit: () => void;
  counts: { created: number; deleted: number; moved: number; written: number; bytes: number };
}

interface Pair {
  node: VNode;
  old: VNode | undefined;
  parsed: ParsedNode;
}

async function lstatOrUndefined(path: string): Promise<import('node:fs').Stats | undefined> {
  try {
    return await fsp.lstat(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw e;
  }
}

function sameRuns(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** Clusters of a run list as an array (for chain comparisons of changed files only). */
function clusterList(runs: number[], limit: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < runs.length && out.length < limit; i += 2) for (let c = runs[i]!; c < runs[i]! + runs[i + 1]! && out.length < limit; c++) out.push(c);
  return out;
}

export async function makePlan(input: PlanInput): Promise<PlanResult> {
  const { old, g, dirty, read, journal, sourceRoot } = input;
  const cs = g.clusterSize;
  const abs = (n: VNode): string => nodePath(n, sourceRoot);
  const result: PlanResult = {
    ops: [],
    root: undefined as unknown as VNode,
    conflicts: [],
    restat: [],
    touchedSnaps: [],
    orphans: [],
    parked: [],
    settled: [],
    deletedNodes: [],
    commit: () => undefined,
    counts: { created: 0, deleted: 0, moved: 0, written: 0, bytes: 0 },
  };

  // 1. Match the host's entries to applied ones, in the directories that changed since the last apply.
  const { byHead, host } = input;
  const appliedDir = (h: number): VNode | undefined => {
    if (h === ROOT_CLUSTER) return old;
    const v = byHead.get(h);
    return v?.isDir && !v.gone ? v : undefined;
  };
  // A directory the applied view does not hold where the host has it (new, moved, parked) is
  // reached through its parent: the parent is diffed too.
  const changed = new Set<number>();
  for (const h of input.changed) if (host.dir(h)) changed.add(h);
  for (const h of [...changed]) {
    for (let x: number | undefined = h; x !== undefined && x !== ROOT_CLUSTER;) {
      const hd: { node: ParsedNode; parent: number | undefined } = host.dir(x)!;
      const v = appliedDir(x);
      const parentHead: number | undefined = hd.parent;
      if (v && !v.parkedAt && v.parent && parentHead !== undefined && v.parent === appliedDir(parentHead)) break;
      if (parentHead === undefined) break;
      changed.add(parentHead);
      x = parentHead;
    }
  }
  const claimed = new Set<VNode>();
  const matchOf = new Map<VNode, VNode>(); // new node → old node
  const pairs: Pair[] = [];
  /** New nodes of clean directories: their children are the applied ones, re-parented at commit. */
  const reusedChildren: VNode[] = [];
  /** Diffed directories whose parent is not diffed: [new node, applied node]; replaced in place at commit. */
  const tops: [VNode, VNode][] = [];
  const queue: { p: ParsedNode; n: VNode }[] = [];
  /** Applied directories whose entries were diffed. */
  const processedOld: VNode[] = [];
  let newRoot = old;
  for (const h of changed) {
    const hd = host.dir(h)!;
    if (hd.parent !== undefined && changed.has(hd.parent)) continue;
    const vd = appliedDir(h)!;
    const nt: VNode = { ...vd, children: new Map(), runs: hd.node.runs };
    claimed.add(vd);
    matchOf.set(nt, vd);
    if (h === ROOT_CLUSTER) newRoot = nt;
    else tops.push([nt, vd]);
    queue.push({ p: hd.node, n: nt });
  }
  for (let q = 0; q < queue.length; q++) {
    const { p: pdir, n: ndir } = queue[q]!;
    const odir = matchOf.get(ndir);
    if (odir) processedOld.push(odir);
    const srcNames = new Set<string>();
    for (const p of pdir.children) {
      let m: VNode | undefined;
      if (p.firstCluster !== 0) m = byHead.get(p.firstCluster);
      else if (odir && !p.isDir) m = odir.children.get(foldCase(p.name));
      if (m && (m.gone || m.isDir !== p.isDir || claimed.has(m) || (p.firstCluster === 0 && m.firstCluster !== 0))) m = undefined;
      if (m) claimed.add(m);
      const node: VNode = {
        name: p.name,
        src: m && m.name === p.name ? m.src : p.name,
        isDir: p.isDir,
        parent: ndir,
        children: new Map(),
        firstCluster: p.firstCluster,
        runs: p.runs,
        size: p.size,
        mdate: p.mdate,
        mtime: p.mtime,
        attr: p.attr,
        snap: m ? m.snap : -1,
        ident: m?.ident,
      };
      if (srcNames.has(node.src)) {
        result.hold = `${relPath(node)}: two entries of one directory would have the same source name`;
        return result;
      }
      srcNames.add(node.src);
      ndir.children.set(foldCase(p.name), node);
      if (m) matchOf.set(node, m);
      pairs.push({ node, old: m, parsed: p });
      if (p.isDir) {
        if (m && !changed.has(p.firstCluster)) {
          // Unchanged inside: the applied subtree stays as it is.
          node.children = m.children;
          reusedChildren.push(node);
        } else queue.push({ p, n: node });
      }
    }
  }
  result.root = newRoot;
  // New positions go through the new nodes of this plan (an ancestor may move while a directory
  // below it changes too); old positions through the applied nodes.
  const newOf = new Map<VNode, VNode>();
  for (const [n, m] of matchOf) newOf.set(m, n);
  const absNew = (n: VNode): string => {
    const parts: string[] = [];
    let top = n;
    for (let v: VNode | undefined = n; v; v = v.parent && (newOf.get(v.parent) ?? v.parent)) {
      top = v;
      if (v.parent) parts.push(v.src);
    }
    const rel = parts.reverse().join('/');
    const base = top.parkedAt ?? sourceRoot;
    return rel ? join(base, rel) : base;
  };
  // Places are made parents first, across all diffed directories.
  const depthNew = new Map<VNode, number>();
  const dOf = (n: VNode): number => {
    let d = depthNew.get(n);
    if (d === undefined) {
      d = 0;
      for (let v = n.parent && (newOf.get(n.parent) ?? n.parent); v; v = v.parent && (newOf.get(v.parent) ?? v.parent)) d++;
      depthNew.set(n, d);
    }
    return d;
  };
  pairs.sort((a, b) => dOf(a.node) - dOf(b.node));
  // What the host may no longer show: the applied entries of the diffed directories that no host entry
  // claimed, with their subtrees, and the parked entries (parents listed before children).
  const oldAll: VNode[] = [];
  {
    // Only through unclaimed entries: a claimed directory's children were diffed or stay as they are.
    const stack: VNode[] = input.orphans.filter((o) => !claimed.has(o));
    for (const n of processedOld) for (const c of n.children.values()) if (!claimed.has(c)) stack.push(c);
    const seen = new Set<VNode>();
    while (stack.length) {
      const n = stack.pop()!;
      if (seen.has(n)) continue;
      seen.add(n);
      oldAll.push(n);
      for (const c of n.children.values()) if (!claimed.has(c)) stack.push(c);
    }
  }
  result.commit = (): void => {
    for (const { node, old: m } of pairs) {
      if (m) m.replacedBy = node;
      if (node.firstCluster !== 0) byHead.set(node.firstCluster, node);
    }
    for (const n of reusedChildren) for (const c of n.children.values()) c.parent = n;
    for (const [nt, vd] of tops) {
      vd.replacedBy = nt;
      if (nt.firstCluster !== 0) byHead.set(nt.firstCluster, nt);
      // Its parent was not diffed, but may have been replaced (reused) by this plan: the current one.
      if (nt.parent) nt.parent = current(nt.parent);
      nt.parent?.children.set(foldCase(nt.name), nt);
    }
    if (newRoot !== old) old.replacedBy = newRoot;
    for (const o of result.deletedNodes) {
      o.gone = true;
      if (o.firstCluster !== 0 && byHead.get(o.firstCluster) === o) byHead.delete(o.firstCluster);
    }
  };

  // 2. Vacate: deletions and moves out, deepest first, at their old paths (nothing has moved yet).
  const moved = new Map<VNode, string>(); // new node → parking path
  const vacated = new Set<string>();
  const vacate: { o: VNode; to?: string; node?: VNode }[] = [];
  // Unclaimed entries whose chain is still allocated are parked (or stay parked) with their subtree;
  // unclaimed entries inside a parked subtree stay where they are; the others are deleted.
  const parkedNow = new Map<VNode, string>();
  const staysParked = new Set<VNode>();
  /** True when a parked entry lies between `o` and the nearest ancestor the host still shows. */
  const inParked = (o: VNode): boolean => {
    for (let a = o.parent; a; a = a.parent) {
      if (staysParked.has(a)) return true;
      if (claimed.has(a)) return false;
    }
    return false;
  };
  for (const o of oldAll) {
    // oldAll lists parents before children, so an ancestor's parking is known here.
    if (claimed.has(o) || o.firstCluster === 0 || inParked(o) || !(await input.lost(o.firstCluster))) continue;
    staysParked.add(o);
    if (!o.parkedAt) parkedNow.set(o, journal.staged(`orphan-${o.firstCluster}`));
  }
  for (const o of oldAll) {
    if (claimed.has(o) || staysParked.has(o) || inParked(o)) continue;
    vacate.push({ o });
  }
  for (const [o, to] of parkedNow) vacate.push({ o, to });
  let park = 0;
  for (const pr of pairs) {
    const m = pr.old;
    if (!m) continue;
    const parentMatch = matchOf.get(pr.node.parent!);
    if (parentMatch !== m.parent || pr.node.src !== m.src) {
      const to = journal.staged(`mv-${park++}`);
      moved.set(pr.node, to);
      vacate.push({ o: m, to, node: pr.node });
    }
  }
  const depths = new Map<VNode, number>();
  for (const v of vacate) depths.set(v.o, depth(v.o));
  vacate.sort((a, b) => depths.get(b.o)! - depths.get(a.o)!);
  const vacateOps: Op[] = [];
  for (const v of vacate) {
    const path = abs(v.o);
    if (v.to) {
      vacateOps.push({ op: 'rename', from: path, to: v.to });
      vacated.add(path);
      if (v.node) result.counts.moved++;
      else result.parked.push([relPath(v.o), v.to]);
      continue;
    }
    result.deletedNodes.push(v.o);
    if (v.o.isDir) {
      vacateOps.push({ op: 'rmdir', path });
      vacated.add(path);
      result.counts.deleted++;
      continue;
    }
    if (v.o.snap >= 0) result.touchedSnaps.push(v.o.snap);
    const st = await lstatOrUndefined(path);
    if (!st) continue;
    if (v.o.ident && (st.ino !== v.o.ident.ino || st.size !== v.o.ident.size || st.mtimeMs !== v.o.ident.mtimeMs || !st.isFile())) {
      result.conflicts.push({ path: relPath(v.o), detail: 'deleted on the volume, but changed in the source since: kept' });
      continue;
    }
    vacateOps.push({ op: 'unlink', path });
    vacated.add(path);
    result.counts.deleted++;
  }
  const isVacated = (path: string): boolean => {
    for (let p = path; p.length > sourceRoot.length; p = dirname(p)) if (vacated.has(p)) return true;
    return false;
  };

  // 3. Place (breadth-first: parents first): new directories, new files, moved entries. 4. Data of matched files.
  let journalReady = false;
  const ready = async (): Promise<void> => {
    if (!journalReady) await journal.begin();
    journalReady = true;
  };
  let blob: import('node:fs/promises').FileHandle | undefined;
  let blobSize = 0;
  const buf = Buffer.alloc(Math.max(cs, 256 * 1024));
  /** Copies clusters [from, from + count) of a chain list to `sink(offsetInFile, bytes)`, within `size`. */
  const copyClusters = async (
    clusters: number[],
    indices: number[],
    size: number,
    sink: (fileOffset: number, data: Buffer) => Promise<void>,
  ): Promise<void> => {
    for (const i of indices) {
      const len = Math.min(cs, size - i * cs);
      if (len <= 0) continue;
      const part = buf.subarray(0, len);
      await read(part, clusterOffset(g, clusters[i]!));
      await sink(i * cs, part);
    }
  };
  /** True when a data cluster of the chain was written since the last apply. */
  const anyDirty = (runs: number[]): boolean => {
    if (dirty.size === 0) return false;
    for (let i = 0; i < runs.length; i += 2) if (dirty.any(runs[i]!, runs[i]! + runs[i + 1]!)) return true;
    return false;
  };
  /** The indices among `indices` whose view bytes differ from the file at `path` (all of them when it cannot be read). */
  const differing = async (path: string, clusters: number[], indices: number[], size: number): Promise<number[]> => {
    if (indices.length === 0) return [];
    let fh: import('node:fs/promises').FileHandle;
    try {
      fh = await fsp.open(path, 'r');
    } catch {
      return indices;
    }
    const out: number[] = [];
    const theirs = Buffer.alloc(cs);
    try {
      for (const i of indices) {
        const len = Math.min(cs, size - i * cs);
        const ours = buf.subarray(0, len);
        await read(ours, clusterOffset(g, clusters[i]!));
        const { bytesRead } = await fh.read(theirs, 0, len, i * cs);
        if (bytesRead !== len || !ours.equals(theirs.subarray(0, len))) out.push(i);
      }
    } finally {
      await fh.close();
    }
    return out;
  };
  const placeOps: Op[] = [];
  const dataOps: Op[] = [];
  const metaOps: Op[] = [];
  const dirTimes: { node: VNode; op: Op }[] = [];
  let staged = 0;
  // New and moved entries need a free place in the source (or one this plan vacates): checked before anything is staged.
  for (const { node, old: m } of pairs) {
    if (m && !moved.has(node)) continue;
    const path = absNew(node);
    if ((await lstatOrUndefined(path)) && !isVacated(path)) {
      result.hold = `${relPath(node)}: the source already holds an entry there that the volume does not show`;
      return result;
    }
  }
  try {
    await stageAndPlan();
  } catch (e) {
    await blob?.close().catch(() => undefined);
    throw e;
  }
  async function stageAndPlan(): Promise<void> {
    for (const pr of pairs) {
      const { node, old: m, parsed: p } = pr;
      const path = absNew(node);
      if (!m) {
        result.counts.created++;
        if (node.isDir) {
          placeOps.push({ op: 'mkdir', path });
          dirTimes.push({ node, op: { op: 'times', path, mtimeMs: fatToMs(p.mdate, p.mtime) } });
          continue;
        }
        await ready();
        const stage = journal.staged(`new-${staged++}`);
        const fh = await fsp.open(stage, 'w');
        try {
          const need = Math.ceil(node.size / cs);
          const clusters = clusterList(node.runs, need);
          await copyClusters(
            clusters,
            clusters.map((_, i) => i),
            node.size,
            async (off, data) => void (await fh.write(data, 0, data.length, off)),
          );
          await fh.truncate(node.size);
          await fh.sync();
        } finally {
          await fh.close();
        }
        result.counts.bytes += node.size;
        placeOps.push({ op: 'rename', from: stage, to: path });
        metaOps.push({ op: 'times', path, mtimeMs: fatToMs(p.mdate, p.mtime) });
        if (node.attr & ATTR_READ_ONLY) metaOps.push({ op: 'mode', path, readOnly: true });
        result.restat.push(node);
        result.settled.push(node);
        continue;
      }
      const park = moved.get(node);
      if (park) placeOps.push({ op: 'rename', from: park, to: path });
      if (node.isDir) {
        if (m.mdate !== p.mdate || m.mtime !== p.mtime) dirTimes.push({ node, op: { op: 'times', path, mtimeMs: fatToMs(p.mdate, p.mtime) } });
        continue;
      }
      // A matched file: what changed?
      const need = Math.ceil(node.size / cs);
      const timesChanged = m.mdate !== p.mdate || m.mtime !== p.mtime;
      const roChanged = (m.attr & ATTR_READ_ONLY) !== (node.attr & ATTR_READ_ONLY);
      const chainSame = sameRuns(m.runs, node.runs);
      if (chainSame && node.size === m.size && !timesChanged && !roChanged && !anyDirty(node.runs)) continue;
      // The source file must still be what the write-back last saw (checked at its old path: nothing moved yet),
      // before any of its clusters is read: the read path refuses (EIO) a file changed by someone else.
      const st = await lstatOrUndefined(abs(m));
      const id = m.ident;
      if (!st || !st.isFile() || (id && (st.ino !== id.ino || st.size !== id.size || st.mtimeMs !== id.mtimeMs))) {
        result.conflicts.push({
          path: relPath(node),
          detail: st
            ? "changed in the source since the volume showed it: the host's change is not applied"
            : "gone from the source: the host's change is not applied",
        });
        continue;
      }
      result.settled.push(node);
      const indices: number[] = [];
      if (!chainSame || node.size !== m.size || anyDirty(node.runs)) {
        // Only the clusters that held the old size's data: a host may have grown the chain before the
        // size (vfat allocates first), and clusters past the old size hold nothing of the source file.
        const oldList = clusterList(m.runs, Math.ceil(m.size / cs));
        const newList = clusterList(node.runs, need);
        let k = 0;
        while (k < newList.length && k < oldList.length && newList[k] === oldList[k]) k++;
        const rewritten: number[] = [];
        for (let i = 0; i < newList.length; i++) {
          const grewInto = node.size > m.size && i === Math.floor(m.size / cs) && m.size % cs !== 0;
          if (i >= k || grewInto) indices.push(i);
          else if (dirty.has(newList[i]!)) rewritten.push(i);
        }
        // Clusters only marked written (a host writes whole pages, which may span a neighbour's cluster,
        // or rewrites the same bytes): copied only when they differ from the source.
        indices.push(...(await differing(abs(m), newList, rewritten, node.size)));
        indices.sort((x, y) => x - y);
      }
      if (indices.length === 0 && node.size === m.size && !timesChanged && !roChanged) continue;
      if (indices.length) {
        await ready();
        blob ??= await fsp.open(journal.blobPath, 'w');
        const fh = blob;
        const newList = clusterList(node.runs, need);
        await copyClusters(newList, indices, node.size, async (off, data) => {
          dataOps.push({ op: 'write', path, offset: off, blobOffset: blobSize, length: data.length });
          await fh.write(data, 0, data.length, blobSize);
          blobSize += data.length;
        });
        result.counts.written++;
        result.counts.bytes += indices.length * cs;
      }
      if (node.size !== m.size) dataOps.push({ op: 'truncate', path, size: node.size });
      if (indices.length || node.size !== m.size || timesChanged) metaOps.push({ op: 'times', path, mtimeMs: fatToMs(p.mdate, p.mtime) });
      if (roChanged) metaOps.push({ op: 'mode', path, readOnly: (node.attr & ATTR_READ_ONLY) !== 0 });
      result.restat.push(node);
      if (node.snap >= 0) result.touchedSnaps.push(node.snap);
    }
  }
  // Directory times last, deepest first (creating entries in a directory changes its mtime).
  dirTimes.sort((a, b) => depth(b.node) - depth(a.node));
  result.ops = [...vacateOps, ...placeOps, ...dataOps, ...metaOps, ...dirTimes.map((d) => d.op)];
  if (blob) {
    await blob.sync();
    await blob.close();
  }
  if (result.ops.some((o) => o.op === 'rename') && !journalReady) await ready();
  // The parked entries of the new view: detached, found through their parking place; children that
  // left them (claimed by the host elsewhere) are no longer theirs.
  for (const o of staysParked) {
    const at = parkedNow.get(o);
    if (at) {
      o.parkedAt = at;
      o.parent = undefined;
    }
    const stack = [o];
    while (stack.length) {
      const n = stack.pop()!;
      for (const [k, c] of n.children) {
        if (claimed.has(c)) n.children.delete(k);
        else stack.push(c);
      }
    }
    result.orphans.push(o);
  }
  return result;
}
