/**
 * The resumable write-back session: what a restarted agent needs to show the host exactly the view
 * it had at its last flush, when that flush could not hand everything to the source (the volume was
 * held as inconsistent, write-back was suspended by a format, or entries were parked).
 *
 * Rule (docs/fat32.md, "Restarts"): a flush that leaves nothing pending removes the session, and a
 * restart then serves a fresh snapshot of the source (which holds everything). A flush that leaves
 * something pending writes the session before it returns, and a restart resumes it: the same
 * snapshot (entry table), hence the same layout, volume id and bytes underneath, the same overlay
 * of host-written sectors, the same applied view; write-back continues from there.
 *
 * Files, in the journal directory: `session-entries.bin` (the snapshot's entry table, written once
 * per session: it never changes), `overlay/` (overlay.ts; its index is written by `persist`) and
 * `session.json` (everything else; written last, atomically: its presence means the rest is
 * durable). A plan committed by a later flush supersedes the session (it applies the whole host view
 * the session held), so the write-back removes `session.json` right after committing a plan, and a
 * start that completes an interrupted plan discards any session.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import { VERSION } from '../../../shared/src/version.js';
import { fsyncPath, writeFileAtomic } from '../durable.js';
import type { ClusterMap } from './clusters.js';
import type { VNode } from './diff.js';
import { EntryTable } from './entries.js';
import type { TreeSnapshot } from './tree.js';

export const SESSION_FILE = 'session.json';
const ENTRIES_FILE = 'session-entries.bin';

export interface WriteBackCounters {
  created: number;
  deleted: number;
  moved: number;
  written: number;
  bytes: number;
}

/** The write-back's own state, as the session keeps it. */
export interface WriteBackState {
  root: VNode;
  orphans: VNode[];
  /** Data clusters written since the last apply, as runs. */
  dirty: number[];
  flushes: number;
  stats: WriteBackCounters;
  held: string[] | undefined;
  suspended: string | undefined;
  conflicts: [string, string][];
  notes: string[];
}

export interface SessionVolume {
  size: number;
  clusterSize: number;
  volumeId: number;
  label: string;
  /** Fingerprint of the cluster layout: a resumed snapshot must lay out exactly the same. */
  layout: string;
}

interface SessionFile {
  format: 1;
  agentVersion: string;
  savedAt: string;
  volume: SessionVolume;
  snapshot: Omit<TreeSnapshot, 'entries' | 'takenAt'> & { takenAt: string };
  view: FlatNode[];
  state: Omit<WriteBackState, 'root' | 'orphans'>;
}

/** One applied-view node; `p` is the parent's index (-1 for the root and parked entries). */
interface FlatNode {
  n: string;
  s?: string;
  d?: 1;
  p: number;
  f: number;
  r: number[];
  z: number;
  md: number;
  mt: number;
  a: number;
  sn: number;
  i?: [number, number, number];
  pk?: string;
}

export interface ResumedSession {
  snapshot: TreeSnapshot;
  volume: SessionVolume;
  state: WriteBackState;
}

/** A short fingerprint of the cluster runs (start, length, owner of every run). */
export function layoutFingerprint(cm: ClusterMap): string {
  let h = 0x811c9dc5;
  const mix = (v: number): void => {
    h = Math.imul(h ^ (v & 0xffff), 0x01000193) >>> 0;
    h = Math.imul(h ^ (v >>> 16), 0x01000193) >>> 0;
  };
  for (let i = 0; i < cm.runs; i++) {
    mix(cm.start[i]!);
    mix(cm.length[i]!);
    mix(cm.owner[i]!);
  }
  return `${cm.runs}:${h.toString(16)}`;
}

function flatten(root: VNode, orphans: VNode[]): FlatNode[] {
  const out: FlatNode[] = [];
  const visit = (top: VNode): void => {
    const stack: [VNode, number][] = [[top, -1]];
    while (stack.length) {
      const [v, p] = stack.pop()!;
      const i = out.length;
      out.push({
        n: v.name,
        ...(v.src !== v.name ? { s: v.src } : {}),
        ...(v.isDir ? { d: 1 as const } : {}),
        p,
        f: v.firstCluster,
        r: v.runs,
        z: v.size,
        md: v.mdate,
        mt: v.mtime,
        a: v.attr,
        sn: v.snap,
        ...(v.ident ? { i: [v.ident.ino, v.ident.size, v.ident.mtimeMs] as [number, number, number] } : {}),
        ...(v.parkedAt ? { pk: v.parkedAt } : {}),
      });
      for (const c of v.children.values()) stack.push([c, i]);
    }
  };
  visit(root);
  for (const o of orphans) visit(o);
  return out;
}

function unflatten(flat: FlatNode[], foldCase: (s: string) => string): { root: VNode; orphans: VNode[] } {
  const nodes: VNode[] = [];
  const orphans: VNode[] = [];
  for (const f of flat) {
    const parent = f.p >= 0 ? nodes[f.p] : undefined;
    const v: VNode = {
      name: f.n,
      src: f.s ?? f.n,
      isDir: f.d === 1,
      parent,
      children: new Map(),
      firstCluster: f.f,
      runs: f.r,
      size: f.z,
      mdate: f.md,
      mtime: f.mt,
      attr: f.a,
      snap: f.sn,
      ident: f.i ? { ino: f.i[0], size: f.i[1], mtimeMs: f.i[2] } : undefined,
      ...(f.pk ? { parkedAt: f.pk } : {}),
    };
    nodes.push(v);
    if (parent) parent.children.set(foldCase(v.name), v);
    else if (v.parkedAt) orphans.push(v);
  }
  if (!nodes[0]) throw new BridgeError('EIO', 'write-back session holds no applied view');
  return { root: nodes[0], orphans };
}

/** The entry table's columns: every typed array by its property name, then the string columns as JSON. */
function encodeEntries(t: EntryTable): Buffer {
  const parts: Buffer[] = [];
  const header: { count: number; typed: [string, string, number][]; strings: Record<string, unknown[]> } = { count: t.count, typed: [], strings: {} };
  for (const [key, value] of Object.entries(t)) {
    if (ArrayBuffer.isView(value)) {
      const arr = value as unknown as { constructor: { name: string }; BYTES_PER_ELEMENT: number; buffer: ArrayBuffer; byteOffset: number };
      const bytes = Buffer.from(arr.buffer, arr.byteOffset, t.count * arr.BYTES_PER_ELEMENT);
      header.typed.push([key, arr.constructor.name, bytes.length]);
      parts.push(bytes);
    } else if (Array.isArray(value)) header.strings[key] = value.slice(0, t.count);
  }
  const head = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(4);
  len.writeUInt32LE(head.length);
  return Buffer.concat([len, head, ...parts]);
}

const TYPED: Record<string, new (b: ArrayBuffer) => ArrayBufferView> = {
  Int32Array,
  Uint32Array,
  Uint8Array,
  Float64Array,
  Int16Array,
  Uint16Array,
  Float32Array,
  Int8Array,
};

function decodeEntries(buf: Buffer): EntryTable {
  const headLen = buf.readUInt32LE(0);
  const header = JSON.parse(buf.toString('utf8', 4, 4 + headLen)) as { count: number; typed: [string, string, number][]; strings: Record<string, unknown[]> };
  const t = new EntryTable();
  const target = t as unknown as Record<string, unknown>;
  let pos = 4 + headLen;
  for (const [key, type, length] of header.typed) {
    const Ctor = TYPED[type];
    if (!Ctor || !(key in target)) throw new BridgeError('EIO', `write-back session: unknown entry column ${key} (${type})`);
    const copy = new ArrayBuffer(Math.max(length, 8));
    new Uint8Array(copy).set(buf.subarray(pos, pos + length));
    target[key] = new Ctor(copy);
    pos += length;
  }
  for (const [key, values] of Object.entries(header.strings)) {
    const arr = target[key];
    if (!Array.isArray(arr)) throw new BridgeError('EIO', `write-back session: unknown entry column ${key}`);
    arr.length = 0;
    arr.push(...values);
  }
  t.count = header.count;
  return t;
}

export class Session {
  private entriesWritten = false;

  constructor(
    readonly dir: string,
    private readonly sourceRoot: string,
  ) {}

  get file(): string {
    return join(this.dir, SESSION_FILE);
  }

  /** Writes the session durably (the overlay was persisted just before). */
  async save(snapshot: TreeSnapshot, volume: SessionVolume, state: WriteBackState): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true });
    if (!this.entriesWritten) {
      await writeFileAtomic(join(this.dir, ENTRIES_FILE), encodeEntries(snapshot.entries));
      this.entriesWritten = true;
    }
    const { root, orphans, ...rest } = state;
    const file: SessionFile = {
      format: 1,
      agentVersion: VERSION,
      savedAt: new Date().toISOString(),
      volume,
      snapshot: {
        source: snapshot.source,
        leftOut: snapshot.leftOut,
        renamed: snapshot.renamed,
        files: snapshot.files,
        directories: snapshot.directories,
        bytes: snapshot.bytes,
        takenAt: snapshot.takenAt.toISOString(),
      },
      view: flatten(root, orphans),
      state: rest,
    };
    await writeFileAtomic(this.file, Buffer.from(JSON.stringify(file)));
  }

  /** Removes the session marker durably (the entries file goes with it). */
  async remove(): Promise<void> {
    const existed = await fsp.rm(this.file).then(
      () => true,
      (e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return false;
        throw e;
      },
    );
    await fsp.rm(join(this.dir, ENTRIES_FILE), { force: true });
    this.entriesWritten = false;
    if (existed) await fsyncPath(this.dir);
  }

  /** The session a previous agent left, or undefined. Throws when it cannot be used (named in the message). */
  async load(foldCase: (s: string) => string): Promise<ResumedSession | undefined> {
    let text: string;
    try {
      text = await fsp.readFile(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    const how = `move ${this.dir} away to start from the source as it is (the host writes it holds are then dropped)`;
    let file: SessionFile;
    let entries: EntryTable;
    try {
      file = JSON.parse(text) as SessionFile;
      entries = decodeEntries(await fsp.readFile(join(this.dir, ENTRIES_FILE)));
    } catch (e) {
      throw new BridgeError('EIO', `write-back session ${this.file} is unreadable (${errorMessage(e)}); ${how}`);
    }
    if (file.format !== 1 || file.snapshot.source !== this.sourceRoot) {
      throw new BridgeError('EINVAL', `write-back session ${this.file} belongs to source ${file.snapshot.source}, not ${this.sourceRoot}; ${how}`);
    }
    this.entriesWritten = true;
    const { root, orphans } = unflatten(file.view, foldCase);
    return {
      snapshot: { ...file.snapshot, entries, takenAt: new Date(file.snapshot.takenAt) },
      volume: file.volume,
      state: { ...file.state, root, orphans },
    };
  }
}
