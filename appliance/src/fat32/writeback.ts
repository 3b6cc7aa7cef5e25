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
 */
import { promises as fsp } from 'node:fs';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { makePlan, nodePath, viewFromSnapshot, type VNode } from './diff.js';
import type { Journal } from './journal.js';
import { SECTOR, type Geometry } from './layout.js';
import type { Overlay } from './overlay.js';
import { parseVolume, type ReadFn } from './parse.js';
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
  overlayBytes: number;
}

export interface WriteBackHost {
  geometry: Geometry;
  snapshot: TreeSnapshot;
  overlay: Overlay;
  /** The synthesized MBR and reserved sectors, to recognise a rewritten boot sector. */
  mbr: Buffer;
  reserved: Buffer;
  /** Reads the host's view without waiting for the flush in progress. */
  readView: ReadFn;
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

export class WriteBack {
  /** Data clusters written since the last apply. */
  readonly dirty = new Set<number>();
  private view: VNode | undefined;
  /** Entries the host left unreachable while their clusters stay allocated, kept in the journal directory. */
  private orphans: VNode[] = [];
  private snapNodes = new Map<number, VNode>();
  private flushing: Promise<void> | undefined;
  private readonly stats = { created: 0, deleted: 0, moved: 0, written: 0, bytes: 0 };
  private flushes = 0;
  private held: string[] | undefined;
  private suspended: string | undefined;
  private readonly conflicts = new Map<string, string>();
  private readonly notes: string[] = [];

  constructor(
    private readonly host: WriteBackHost,
    private readonly journal: Journal,
    private readonly log: Logger,
  ) {}

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
    const n = this.snapNodes.get(entry);
    if (!n || !n.ident) return null;
    return { path: nodePath(n, this.host.snapshot.source), size: n.ident.size, mtimeMs: n.ident.mtimeMs, ino: n.ident.ino };
  }

  markWritten(offset: number, length: number): void {
    const g = this.host.geometry;
    const end = Math.min(offset + length, g.dataOffset + g.clusterCount * g.clusterSize);
    if (end <= g.dataOffset) return;
    const first = Math.floor((Math.max(offset, g.dataOffset) - g.dataOffset) / g.clusterSize) + 2;
    const last = Math.floor((end - 1 - g.dataOffset) / g.clusterSize) + 2;
    for (let c = first; c <= last; c++) this.dirty.add(c);
  }

  /** Applies what the host wrote; one flush at a time. */
  flush(): Promise<void> {
    // After the flush before it, whether that one succeeded or not (its caller got its error).
    const run = (this.flushing ?? Promise.resolve()).catch(() => undefined).then(() => this.doFlush());
    const tracked = run.finally(() => {
      if (this.flushing === tracked) this.flushing = undefined;
    });
    this.flushing = tracked;
    return tracked;
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
      overlayBytes: this.host.overlay.bytes,
    };
  }

  private async bootProblem(): Promise<string | undefined> {
    const h = this.host;
    const mbr = Buffer.alloc(SECTOR);
    await h.readView(mbr, 0);
    if (!mbr.subarray(440, 512).equals(h.mbr.subarray(440, 512))) return 'the MBR (partition table) was rewritten';
    const boot = Buffer.alloc(SECTOR);
    await h.readView(boot, h.geometry.partitionOffset);
    for (const [a, b] of BOOT_CHECKED) {
      if (!boot.subarray(a, b).equals(h.reserved.subarray(a, b)))
        return `the boot sector was rewritten (bytes ${a}-${b - 1} differ: a format or geometry change)`;
    }
    return undefined;
  }

  private async doFlush(): Promise<void> {
    const h = this.host;
    if (this.suspended || (h.overlay.writesSinceApply === 0 && !this.held)) return;
    this.flushes++;
    const boot = await this.bootProblem();
    if (boot) {
      this.suspended = `${boot}; host writes are kept in memory only, the source is not changed until the volume is served again`;
      this.log.error('write-back suspended', { reason: boot });
      return;
    }
    const view = this.view ?? this.adopt(viewFromSnapshot(h.snapshot.entries), []);
    const parsed = await parseVolume(h.readView, h.geometry, { reservedRootName: this.journal.inSource ? this.journal.name : undefined });
    if (parsed.problems.length) return this.hold(parsed.problems);
    const plan = await makePlan({
      old: view,
      parsed: parsed.root,
      g: h.geometry,
      dirty: this.dirty,
      read: h.readView,
      journal: this.journal,
      sourceRoot: h.snapshot.source,
      orphans: this.orphans,
      lost: async (c) => !parsed.reachable(c) && (await parsed.fatEntry(c)) !== 0,
    });
    if (plan.hold) {
      await this.journal.finish();
      return this.hold([plan.hold]);
    }
    if (plan.ops.length) {
      if (this.log.enabled('debug')) this.log.debug('write-back plan', { ops: plan.ops.map((o) => JSON.stringify(o)), dirty: [...this.dirty].join(',') });
      await this.journal.commit(plan.ops);
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
    h.overlay.writesSinceApply = 0;
    if (this.held) this.log.info('write-back resumed: the volume is consistent again');
    this.held = undefined;
    if (plan.ops.length) this.log.info('host changes applied to the source', { ops: plan.ops.length, ...plan.counts });
  }

  /** Makes `root` (and the parked entries) the applied view; the read path finds snapshot files through it. */
  private adopt(root: VNode, orphans: VNode[]): VNode {
    const snapNodes = new Map<number, VNode>();
    const stack = [root, ...orphans];
    while (stack.length) {
      const n = stack.pop()!;
      if (n.snap >= 0) snapNodes.set(n.snap, n);
      for (const c of n.children.values()) stack.push(c);
    }
    this.view = root;
    this.orphans = orphans;
    this.snapNodes = snapNodes;
    return root;
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
