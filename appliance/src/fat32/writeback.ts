/**
 * The write-back: turns what the host wrote into changes of the source tree at each flush.
 *
 * At a flush (fsync/close of the FUSE file, SCSI SYNCHRONIZE CACHE), when the host wrote anything
 * since the last one: check that the MBR and boot sector are still ours (else write-back is suspended
 * for the session: a format or a geometry change must never reach the source), parse the host's view
 * (parse.ts; any problem holds the write-back until a later flush finds the volume consistent), diff
 * it against the applied view into a plan (diff.ts), make the plan durable and run it (journal.ts),
 * then adopt the host's view as the applied one. I/O on the volume waits while a flush runs, so the
 * source is never read while it is half-changed. All source I/O here is asynchronous (the source may
 * be served by this same process).
 *
 * The host's view is three layers: the synthesized bytes (the snapshot), then data clusters whose
 * overlay sectors were dropped once applied (read from the source file that now holds them, through
 * the applied view: `redirected`), then the overlay (overlay.ts, on disk). Memory holds only bitmaps
 * and the applied view (one node per entry), never written data.
 *
 * After every flush, if anything the host wrote is still not in the source (held, suspended,
 * parked entries), the session is made durable (session.ts) before the flush returns.
 */
import { constants as fsc, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { SparseBitmap } from './bitmap.js';
import type { ClusterMap } from './clusters.js';
import { current, makePlan, nodePath, viewFromSnapshot, type VNode } from './diff.js';
import type { Journal } from './journal.js';
import { clusterOffset, ROOT_CLUSTER, SECTOR, type Geometry } from './layout.js';
import { Overlay } from './overlay.js';
import { clusterOfRuns, firstRunEndingAfter, HostParser, parseVolume, type ParsedNode, type ParsedVolume, type ReadFn } from './parse.js';
import { layoutFingerprint, Session, type ResumedSession, type SessionVolume, type WriteBackState } from './session.js';
import type { SourceFileIdentity } from './source-files.js';
import type { TreeSnapshot } from './tree.js';

export interface WriteBackReport {
  journal: string;
  flushes: number;
  applied: { created: number; deleted: number; moved: number; written: number; bytes: number };
  /** Why the last flush applied nothing (inconsistent volume, occupied source path); cleared by the next applied flush. */
  held: string[] | undefined;
  /** Set when write-back stopped for this session (boot sector or MBR rewritten, an apply failed). */
  suspended: string | undefined;
  /** Host changes refused because the source changed under them. */
  conflicts: { path: string; detail: string }[];
  /** Other things worth knowing (directories kept because they hold entries the volume does not show). */
  notes: string[];
  /** Host-written bytes held in the overlay (on disk, in the journal directory). */
  overlayBytes: number;
  /** Entries the host left unreachable with their clusters still allocated, kept in the journal directory. */
  parked: number;
  /** Set when this session was resumed from the journal at start (host writes a flush left unapplied). */
  resumedFrom: string | undefined;
}

export interface WriteBackHost {
  geometry: Geometry;
  snapshot: TreeSnapshot;
  clusters: ClusterMap;
  volume: Omit<SessionVolume, 'layout'>;
  /** The synthesized MBR and reserved sectors, to recognise a rewritten boot sector. */
  mbr: Buffer;
  reserved: Buffer;
  /** Reads the synthesized bytes (the layer under everything the host wrote). */
  readBase: ReadFn;
  /** The source file of a snapshot entry changed (or went away): drop cached descriptors and change marks. */
  forget(entry: number): void;
}

/** Boot sector bytes that must stay ours: the BPB (11-63), signature and volume id (66-70), FS type (82-89), 0x55AA. */
const BOOT_CHECKED: [number, number][] = [
  [11, 64],
  [66, 71],
  [82, 90],
  [510, 512],
];

/** Test hook: every incremental parse is compared with a full one (a difference fails the flush). */
const CHECK_PARSE = process.env.BRIDGE_FAT32_PARSE_CHECK === '1';

async function checkAgainstFullParse(parsed: ParsedVolume, read: ReadFn, g: Geometry, journal: Journal): Promise<void> {
  const full = await parseVolume(read, g, { reservedRootName: journal.inSource ? journal.name : undefined });
  const canon = (n: ParsedNode): unknown => [n.name, n.isDir, n.attr, n.firstCluster, n.size, n.mdate, n.mtime, n.runs, n.children.map(canon)];
  const a = JSON.stringify([parsed.problems.length > 0, canon(parsed.root)]);
  const b = JSON.stringify([full.problems.length > 0, canon(full.root)]);
  if (a !== b) throw new BridgeError('EIO', `incremental parse differs from a full parse: ${parsed.problems.join('; ')} | ${full.problems.join('; ')}`);
}

/** Runs of redirected data clusters: cluster → applied file node and index in its chain. */
interface RedirectIndex {
  start: Float64Array;
  length: Float64Array;
  first: Float64Array;
  node: VNode[];
}

const EMPTY_INDEX: RedirectIndex = { start: new Float64Array(0), length: new Float64Array(0), first: new Float64Array(0), node: [] };

export class WriteBack {
  /** Data clusters written since the last apply. */
  readonly dirty = new SparseBitmap();
  readonly overlay: Overlay;
  private readonly session: Session;
  private readonly parser: HostParser;
  private view: VNode | undefined;
  /** Entries the host left unreachable while their clusters stay allocated, kept in the journal directory. */
  private orphans: VNode[] = [];
  private snapNodes = new Map<number, VNode>();
  /** Applied entries with a first cluster, by first cluster (plans update it as they commit). */
  private byHead = new Map<number, VNode>();
  /** Host directories rebuilt by parses since the last apply: what the next plan diffs. */
  private readonly changedDirs = new Set<number>();
  /** Data clusters whose overlay sectors were dropped: read from the applied file that holds them. */
  private readonly redirected = new SparseBitmap();
  private redirects: RedirectIndex = EMPTY_INDEX;
  private readonly sourceHandles = new Map<string, Promise<FileHandle>>();
  private flushing: Promise<void> | undefined;
  private readonly stats = { created: 0, deleted: 0, moved: 0, written: 0, bytes: 0 };
  private flushes = 0;
  private held: string[] | undefined;
  private suspended: string | undefined;
  private readonly conflicts = new Map<string, string>();
  private readonly notes: string[] = [];
  /** Bumped whenever what the session file holds changes; `savedGen` is what is on disk (-1: no session). */
  private gen = 0;
  private savedGen = -1;
  private readonly resumedFrom: string | undefined;
  private readonly layout: string;

  constructor(
    private readonly host: WriteBackHost,
    private readonly journal: Journal,
    private readonly log: Logger,
    resume?: ResumedSession,
  ) {
    this.overlay = new Overlay(join(journal.dir, 'overlay'));
    this.session = new Session(journal.dir, host.snapshot.source);
    this.parser = new HostParser(host.geometry, { reservedRootName: journal.inSource ? journal.name : undefined });
    this.layout = layoutFingerprint(host.clusters);
    if (resume) {
      if (resume.volume.layout !== this.layout) {
        throw new BridgeError(
          'EINVAL',
          `write-back session in ${journal.dir} does not match this agent's layout of its snapshot (saved by another agent version?); move ${journal.dir} away to start from the source as it is`,
        );
      }
      const st = resume.state;
      this.adoptFirst(st.root, st.orphans);
      for (let i = 0; i + 1 < st.dirty.length; i += 2) this.dirty.addRange(st.dirty[i]!, st.dirty[i]! + st.dirty[i + 1]!);
      this.flushes = st.flushes;
      Object.assign(this.stats, st.stats);
      this.held = st.held;
      this.suspended = st.suspended;
      for (const [k, v] of st.conflicts) this.conflicts.set(k, v);
      this.notes.push(...st.notes);
      this.resumedFrom = this.session.file;
      this.savedGen = this.gen;
    }
  }

  /** Loads what a resumed session needs from disk (the overlay index); a fresh session clears stale overlay files. */
  async open(): Promise<void> {
    if (this.resumedFrom) {
      await this.overlay.load();
      this.log.warn('write-back session resumed: the host sees the volume as it was at its last flush', {
        session: this.resumedFrom,
        overlayBytes: this.overlay.bytes,
        held: this.held?.length ?? 0,
        suspended: this.suspended,
        parked: this.orphans.length,
      });
    } else await this.overlay.destroy();
  }

  /** Resolves once no flush is running (I/O waits on it). */
  get busy(): Promise<void> | undefined {
    return this.flushing;
  }

  /**
   * The source file holding a snapshot entry's original data now: undefined while nothing was
   * applied (the snapshot's own), null when the entry is gone from the source.
   */
  identity(entry: number): SourceFileIdentity | null | undefined {
    if (!this.view) return undefined;
    const found = this.snapNodes.get(entry);
    const n = found && current(found);
    if (n && n !== found) this.snapNodes.set(entry, n);
    if (!n || n.gone || !n.ident) return null;
    return { path: nodePath(n, this.host.snapshot.source), size: n.ident.size, mtimeMs: n.ident.mtimeMs, ino: n.ident.ino };
  }

  /** Stores a host write (`base` gives the synthesized bytes of a sector written in part). */
  async write(data: Uint8Array, offset: number, base: ReadFn): Promise<void> {
    await this.overlay.write(data, offset, (t, o) => this.readUnder(t, o, base));
    this.markWritten(offset, data.length);
    this.parser.noteWrite(offset, data.length);
  }

  private markWritten(offset: number, length: number): void {
    const g = this.host.geometry;
    const end = Math.min(offset + length, g.dataOffset + g.clusterCount * g.clusterSize);
    if (end <= g.dataOffset) return;
    const first = Math.floor((Math.max(offset, g.dataOffset) - g.dataOffset) / g.clusterSize) + 2;
    const last = Math.floor((end - 1 - g.dataOffset) / g.clusterSize) + 2;
    this.dirty.addRange(first, last + 1);
    this.gen++;
  }

  /** The host's view: `target` holds the synthesized bytes at `offset`; the layers above are patched on. */
  async patch(target: Buffer, offset: number): Promise<void> {
    await this.patchRedirected(target, offset);
    await this.overlay.patch(target, offset);
  }

  /** The host's view of [offset, offset + target.length). */
  readView(target: Buffer, offset: number): Promise<void> {
    return this.host.readBase(target, offset).then(() => this.patch(target, offset));
  }

  /** What lies under the overlay: synthesized bytes with redirected clusters patched on. */
  private async readUnder(target: Buffer, offset: number, base: ReadFn): Promise<void> {
    await base(target, offset);
    await this.patchRedirected(target, offset);
  }

  /** Whether host writes (held in the overlay, or applied and redirected) stand anywhere in [offset, offset + length). */
  touches(offset: number, length: number): boolean {
    if (this.overlay.touches(offset, length)) return true;
    const span = this.redirectedSpan(offset, offset + length);
    return span !== undefined && this.redirected.any(span[0], span[1] + 1);
  }

  /** The data clusters [first, last] that [offset, end) covers, when any of them is redirected. */
  private redirectedSpan(offset: number, end: number): [number, number] | undefined {
    if (this.redirected.size === 0) return undefined;
    const g = this.host.geometry;
    const cs = g.clusterSize;
    end = Math.min(end, g.dataOffset + g.clusterCount * cs);
    if (end <= g.dataOffset) return undefined;
    return [Math.floor((Math.max(offset, g.dataOffset) - g.dataOffset) / cs) + ROOT_CLUSTER, Math.floor((end - 1 - g.dataOffset) / cs) + ROOT_CLUSTER];
  }

  private async patchRedirected(target: Buffer, offset: number): Promise<void> {
    const span = this.redirectedSpan(offset, offset + target.length);
    if (!span || !this.redirected.any(span[0], span[1] + 1)) return;
    const [firstC, lastC] = span;
    const g = this.host.geometry;
    const cs = g.clusterSize;
    const end = Math.min(offset + target.length, g.dataOffset + g.clusterCount * cs);
    for (let c = firstC; c <= lastC; c++) {
      if (!this.redirected.has(c)) continue;
      const from = Math.max(offset, clusterOffset(g, c));
      const to = Math.min(end, clusterOffset(g, c) + cs);
      const part = target.subarray(from - offset, to - offset);
      const at = this.redirectOf(c);
      if (!at) {
        // The file that held it is gone or no longer uses it: a free cluster, whose bytes mean nothing.
        part.fill(0);
        continue;
      }
      const fileOffset = at.index * cs + (from - clusterOffset(g, c));
      await this.readSource(at.node, part, fileOffset);
    }
  }

  private redirectOf(c: number): { node: VNode; index: number } | undefined {
    const r = this.redirects;
    const lo = firstRunEndingAfter(r.start, r.length, c);
    if (lo >= r.start.length || r.start[lo]! > c) return undefined;
    const node = current(r.node[lo]!);
    if (node.gone) return undefined;
    const index = r.first[lo]! + (c - r.start[lo]!);
    return clusterOfRuns(node.runs, index) === c ? { node, index } : undefined;
  }

  /** Reads an applied file's bytes (zeros past its end); EIO when someone else changed it. */
  private async readSource(node: VNode, target: Buffer, position: number): Promise<void> {
    const id = node.ident;
    const valid = id ? Math.max(0, Math.min(target.length, id.size - position)) : 0;
    target.fill(0, valid);
    if (valid === 0) return;
    const path = nodePath(node, this.host.snapshot.source);
    let h = this.sourceHandles.get(path);
    if (!h) {
      h = fsp.open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
      this.sourceHandles.set(path, h);
      h.catch(() => this.sourceHandles.delete(path));
      if (this.sourceHandles.size > 32) this.closeSourceHandles(1);
    }
    const fh = await h;
    const { bytesRead } = await fh.read(target, 0, valid, position);
    const st = await fh.stat();
    if (bytesRead < valid || st.ino !== id!.ino || st.size !== id!.size || st.mtimeMs !== id!.mtimeMs) {
      throw new BridgeError('EIO', `source file ${path} changed after the write-back wrote it: its data is no longer served`);
    }
  }

  private closeSourceHandles(keep = 0): void {
    for (const [k, h] of this.sourceHandles) {
      if (this.sourceHandles.size <= keep) break;
      this.sourceHandles.delete(k);
      void h.then((fh) => fh.close()).catch(() => undefined);
    }
  }

  /** Applies what the host wrote; one flush at a time. */
  flush(): Promise<void> {
    // After the flush before it, whether that one succeeded or not (its caller got its error).
    const run = (this.flushing ?? Promise.resolve())
      .catch(() => undefined)
      .then(() => this.doFlush())
      .then(() => this.settle());
    const tracked = run.finally(() => {
      if (this.flushing === tracked) this.flushing = undefined;
    });
    this.flushing = tracked;
    return tracked;
  }

  /** Applies what is left (as a flush would) and keeps or drops the session; the volume is closing. */
  async close(): Promise<void> {
    await this.flush();
    this.closeSourceHandles();
    if (this.pending) await this.overlay.close();
    else {
      await this.overlay.destroy();
      // The journal directory goes when it holds nothing else (an empty directory only).
      await fsp.rmdir(this.journal.dir).catch(() => undefined);
    }
  }

  report(): WriteBackReport {
    return {
      journal: this.journal.dir,
      flushes: this.flushes,
      applied: { ...this.stats },
      held: this.held,
      suspended: this.suspended,
      conflicts: [...this.conflicts].map(([path, detail]) => ({ path, detail })),
      notes: [...this.notes],
      overlayBytes: this.overlay.bytes,
      parked: this.orphans.length,
      resumedFrom: this.resumedFrom,
    };
  }

  /** Host writes the source does not hold yet: held, suspended, or parked entries. */
  private get pending(): boolean {
    return this.suspended !== undefined || this.held !== undefined || this.orphans.length > 0;
  }

  /**
   * The end of every flush: with something pending, make the overlay and the session durable so that
   * a restart restores the host's view; with nothing pending, remove a session left from before.
   */
  private async settle(): Promise<void> {
    if (this.pending) {
      await this.overlay.persist();
      if (this.savedGen === this.gen) return;
      const gen = this.gen;
      await this.session.save(this.host.snapshot, { ...this.host.volume, layout: this.layout }, this.state());
      this.savedGen = gen;
    } else if (this.savedGen >= 0) {
      await this.session.remove();
      this.savedGen = -1;
    }
  }

  private state(): WriteBackState {
    return {
      root: this.view ?? viewFromSnapshot(this.host.snapshot.entries),
      orphans: this.orphans,
      dirty: this.dirty.runs(),
      flushes: this.flushes,
      stats: { ...this.stats },
      held: this.held,
      suspended: this.suspended,
      conflicts: [...this.conflicts],
      notes: [...this.notes],
    };
  }

  private async bootProblem(): Promise<string | undefined> {
    const h = this.host;
    const mbr = Buffer.alloc(SECTOR);
    await this.readView(mbr, 0);
    if (!mbr.subarray(440, 512).equals(h.mbr.subarray(440, 512))) return 'the MBR (partition table) was rewritten';
    const boot = Buffer.alloc(SECTOR);
    await this.readView(boot, h.geometry.partitionOffset);
    for (const [a, b] of BOOT_CHECKED) {
      if (!boot.subarray(a, b).equals(h.reserved.subarray(a, b)))
        return `the boot sector was rewritten (bytes ${a}-${b - 1} differ: a format or geometry change)`;
    }
    return undefined;
  }

  private async doFlush(): Promise<void> {
    const h = this.host;
    const ov = this.overlay;
    if (this.suspended || (ov.writesSinceApply === 0 && !this.held)) return;
    this.flushes++;
    this.gen++;
    const boot = await this.bootProblem();
    if (boot) {
      this.suspended = `${boot}; host writes are kept in the overlay only (on disk, kept across restarts), the source is not changed`;
      this.log.error('write-back suspended', { reason: boot });
      return;
    }
    const view = this.view ?? this.adoptFirst(viewFromSnapshot(h.snapshot.entries), []);
    const read: ReadFn = (t, o) => this.readView(t, o);
    const t0 = performance.now();
    const parsed = await this.parser.parse(read);
    for (const d of parsed.rebuilt) this.changedDirs.add(d);
    const t1 = performance.now();
    if (CHECK_PARSE) await checkAgainstFullParse(parsed, read, h.geometry, this.journal);
    if (parsed.problems.length) return this.hold(parsed.problems);
    // Directories holding files with written data are diffed too (their entries may be unchanged).
    const changed = new Set(this.changedDirs);
    const dr = this.dirty.runs();
    for (let i = 0; i < dr.length; i += 2) {
      for (const head of this.parser.headsIn(dr[i]!, dr[i]! + dr[i + 1]!)) {
        const d = this.parser.dirOf(head);
        if (d !== undefined) changed.add(d);
      }
    }
    const plan = await makePlan({
      old: view,
      byHead: this.byHead,
      changed,
      host: this.parser,
      g: h.geometry,
      dirty: this.dirty,
      read,
      journal: this.journal,
      sourceRoot: h.snapshot.source,
      orphans: this.orphans,
      lost: async (c) => !parsed.reachable(c) && (await parsed.fatEntry(c)) !== 0,
    });
    const t2 = performance.now();
    if (this.log.enabled('debug')) this.log.debug('write-back flush', { parseMs: Math.round(t1 - t0), planMs: Math.round(t2 - t1), ...this.parser.lastWork });
    if (plan.hold) {
      await this.journal.finish();
      return this.hold([plan.hold]);
    }
    if (plan.ops.length) {
      if (this.log.enabled('debug')) this.log.debug('write-back plan', { ops: plan.ops.map((o) => JSON.stringify(o)) });
      await this.journal.commit(plan.ops);
      // The committed plan applies the whole host view a saved session held: that session is superseded.
      if (this.savedGen >= 0) {
        await this.session.remove();
        this.savedGen = -1;
      }
      this.closeSourceHandles();
      try {
        const notes = await this.journal.run(plan.ops);
        for (const n of notes) {
          this.log.warn('write-back note', { note: n });
          this.notes.push(n);
        }
      } catch (e) {
        // The plan stays in the journal and is completed at the next start; nothing more is applied now.
        this.suspended = `applying host changes failed: ${errorMessage(e)}; the journal ${this.journal.dir} completes them at the next start`;
        this.log.error('write-back suspended', { error: errorMessage(e) });
        throw new BridgeError('EIO', this.suspended, {}, { cause: e });
      }
    } else await this.journal.finish();
    plan.commit();
    this.changedDirs.clear();
    for (const n of plan.restat) {
      try {
        const st = await fsp.lstat(nodePath(n, h.snapshot.source));
        n.ident = { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
      } catch (e) {
        this.log.warn('write-back: a file it just wrote cannot be found', { path: nodePath(n, h.snapshot.source), error: errorMessage(e) });
        n.ident = undefined;
      }
    }
    for (const c of plan.conflicts) {
      if (!this.conflicts.has(c.path)) this.log.warn('host change not applied: the source changed under it', c);
      this.conflicts.set(c.path, c.detail);
    }
    for (const [path, at] of plan.parked)
      this.log.info('entry unreachable on the volume but its clusters still allocated: kept aside until it reappears or is freed', { path, at });
    this.adopt(plan.root, plan.orphans);
    for (const e of plan.touchedSnaps) h.forget(e);
    for (const k of Object.keys(this.stats) as (keyof typeof this.stats)[]) this.stats[k] += plan.counts[k];
    // Clusters written in files the plan could not look at (inside parked entries) stay marked, for
    // when they reappear; every other mark was applied.
    const keep = this.dirtyInOrphans();
    this.dirty.clear();
    for (const c of keep) this.dirty.add(c);
    await this.dropApplied(plan.settled);
    ov.writesSinceApply = 0;
    if (this.held) this.log.info('write-back resumed: the volume is consistent again');
    this.held = undefined;
    if (plan.ops.length) this.log.info('host changes applied to the source', { ops: plan.ops.length, ...plan.counts });
  }

  /**
   * Files whose data the source now holds exactly as the host wrote it: their overlay sectors (whole
   * sectors within the file's size; the tail of the last cluster stays) are dropped and their
   * clusters read from the source from now on. Then the overlay gives the disk space back.
   */
  private async dropApplied(settled: VNode[]): Promise<void> {
    const g = this.host.geometry;
    const cs = g.clusterSize;
    for (const n of settled) {
      if (!n.ident) continue;
      const count = Math.ceil(n.size / cs);
      for (let k = 0; k < count; k++) {
        const c = clusterOfRuns(n.runs, k);
        if (c === undefined) break;
        const at = clusterOffset(g, c);
        if (!this.overlay.touches(at, cs) && !this.redirected.has(c)) continue;
        this.overlay.drop(at, Math.min(cs, n.size - k * cs));
        this.redirected.add(c);
      }
    }
    this.rebuildRedirects(settled);
    await this.overlay.compact();
  }

  /** The run index of redirected clusters: rows of the nodes still applied, and the settled files' chains. */
  private rebuildRedirects(settled: VNode[]): void {
    if (this.redirected.size === 0) return;
    const fresh = new Set(settled.map(current));
    const rows: [number, number, number, VNode][] = [];
    const old = this.redirects;
    for (let i = 0; i < old.start.length; i++) {
      const n = current(old.node[i]!);
      if (!n.gone && !fresh.has(n)) rows.push([old.start[i]!, old.length[i]!, old.first[i]!, n]);
    }
    for (const n of fresh) {
      if (n.gone) continue;
      let index = 0;
      for (let i = 0; i < n.runs.length; i += 2) {
        const start = n.runs[i]!;
        const len = n.runs[i + 1]!;
        if (this.redirected.any(start, start + len)) rows.push([start, len, index, n]);
        index += len;
      }
    }
    rows.sort((a, b) => a[0] - b[0]);
    this.redirects = {
      start: Float64Array.from(rows, (r) => r[0]),
      length: Float64Array.from(rows, (r) => r[1]),
      first: Float64Array.from(rows, (r) => r[2]),
      node: rows.map((r) => r[3]),
    };
  }

  /** Makes `root` (and the parked entries) the applied view after a plan committed. */
  private adopt(root: VNode, orphans: VNode[]): VNode {
    this.view = root;
    this.orphans = orphans;
    this.closeSourceHandles();
    return root;
  }

  /** The first applied view (the snapshot, or a resumed session's): indexes built by one walk. */
  private adoptFirst(root: VNode, orphans: VNode[]): VNode {
    const snapNodes = new Map<number, VNode>();
    const byHead = new Map<number, VNode>();
    const stack = [root, ...orphans];
    while (stack.length) {
      const n = stack.pop()!;
      if (n.snap >= 0) snapNodes.set(n.snap, n);
      if (n.firstCluster !== 0) byHead.set(n.firstCluster, n);
      for (const c of n.children.values()) stack.push(c);
    }
    this.snapNodes = snapNodes;
    this.byHead = byHead;
    return this.adopt(root, orphans);
  }

  private dirtyInOrphans(): number[] {
    if (this.orphans.length === 0 || this.dirty.size === 0) return [];
    const out: number[] = [];
    const stack = [...this.orphans];
    while (stack.length) {
      const n = stack.pop()!;
      for (const c of n.children.values()) stack.push(c);
      if (n.isDir) continue;
      for (let i = 0; i < n.runs.length; i += 2) for (let c = n.runs[i]!; c < n.runs[i]! + n.runs[i + 1]!; c++) if (this.dirty.has(c)) out.push(c);
    }
    return out;
  }

  private hold(problems: string[]): void {
    const first = problems.slice(0, 20);
    if (JSON.stringify(first) !== JSON.stringify(this.held)) {
      this.log.warn('host changes held: the volume is not consistent (applied once a flush finds it consistent)', { problems: first, count: problems.length });
    }
    this.held = first;
  }
}
