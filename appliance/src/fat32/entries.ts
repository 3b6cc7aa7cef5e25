/**
 * The entry table of a snapshot, as columns: typed arrays for numbers, plain arrays for names. One
 * JS object per file would cost ~300 bytes and most of the scan's time in garbage collection at
 * 100,000 files; columns cost ~100 bytes per entry. Entry 0 is the root; entries are numbered
 * breadth-first, so the children of a directory are one contiguous range.
 */

export const FLAG_DIR = 1;
/** Long-name entries precede the short entry. */
export const FLAG_LFN = 2;

/** One entry as a plain object: for tests, debugging and the write path's diffs (not for hot paths). */
export interface EntryView {
  index: number;
  parent: number;
  isDir: boolean;
  sourceName: string;
  name: string;
  shortName: string;
  lfn: boolean;
  attr: number;
  size: number;
  mtimeMs: number;
  atimeMs: number;
  birthtimeMs: number;
  ino: number;
  firstCluster: number;
  clusters: number;
  slot: number;
}

export class EntryTable {
  count = 0;
  /** Parent directory (-1 for the root). */
  parent = new Int32Array(1024);
  flags = new Uint8Array(1024);
  attr = new Uint8Array(1024);
  /** File size in bytes (0 for directories). */
  size = new Float64Array(1024);
  mtimeMs = new Float64Array(1024);
  atimeMs = new Float64Array(1024);
  birthtimeMs = new Float64Array(1024);
  ino = new Float64Array(1024);
  /** First cluster of the chain (0 for an empty file); set by the allocator. */
  firstCluster = new Uint32Array(1024);
  /** Clusters in the chain. */
  clusters = new Uint32Array(1024);
  /** Slot (32-byte entry index) of the short entry in the parent directory. */
  slot = new Uint32Array(1024);
  /** Directories: first child and number of children (contiguous), and 32-byte slots used. */
  childStart = new Int32Array(1024);
  childCount = new Int32Array(1024);
  dirSlots = new Uint32Array(1024);
  /** Name in the source directory ('' for the root). */
  readonly sourceName: string[] = [];
  /** Long name on the volume when it differs from the source name, else undefined. */
  readonly mappedName: (string | undefined)[] = [];
  /** 11-byte short name field as a latin1 string. */
  readonly shortName: string[] = [];

  isDir(i: number): boolean {
    return (this.flags[i]! & FLAG_DIR) !== 0;
  }

  /** The long name on the volume. */
  name(i: number): string {
    return this.mappedName[i] ?? this.sourceName[i]!;
  }

  /** Appends an entry and returns its index. */
  add(e: {
    parent: number;
    flags: number;
    attr: number;
    size: number;
    mtimeMs: number;
    atimeMs: number;
    birthtimeMs: number;
    ino: number;
    slot: number;
    sourceName: string;
    mappedName: string | undefined;
    shortName: string;
  }): number {
    if (this.count === this.parent.length) this.grow();
    const i = this.count++;
    this.parent[i] = e.parent;
    this.flags[i] = e.flags;
    this.attr[i] = e.attr;
    this.size[i] = e.size;
    this.mtimeMs[i] = e.mtimeMs;
    this.atimeMs[i] = e.atimeMs;
    this.birthtimeMs[i] = e.birthtimeMs;
    this.ino[i] = e.ino;
    this.slot[i] = e.slot;
    this.sourceName.push(e.sourceName);
    this.mappedName.push(e.mappedName);
    this.shortName.push(e.shortName);
    return i;
  }

  view(i: number): EntryView {
    return {
      index: i,
      parent: this.parent[i]!,
      isDir: this.isDir(i),
      sourceName: this.sourceName[i]!,
      name: this.name(i),
      shortName: this.shortName[i]!,
      lfn: (this.flags[i]! & FLAG_LFN) !== 0,
      attr: this.attr[i]!,
      size: this.size[i]!,
      mtimeMs: this.mtimeMs[i]!,
      atimeMs: this.atimeMs[i]!,
      birthtimeMs: this.birthtimeMs[i]!,
      ino: this.ino[i]!,
      firstCluster: this.firstCluster[i]!,
      clusters: this.clusters[i]!,
      slot: this.slot[i]!,
    };
  }

  /** Index of the entry named `sourceName` in directory `dir`, or -1. */
  find(dir: number, sourceName: string): number {
    const start = this.childStart[dir]!;
    for (let i = start; i < start + this.childCount[dir]!; i++) if (this.sourceName[i] === sourceName) return i;
    return -1;
  }

  /** Bytes held by the columns (names not counted). */
  get columnBytes(): number {
    return this.parent.length * (4 + 1 + 1 + 8 * 5 + 4 * 3 + 4 * 3);
  }

  private grow(): void {
    const n = this.parent.length * 2;
    const g = <T extends Int32Array | Uint32Array | Uint8Array | Float64Array>(a: T): T => {
      const b = new (a.constructor as new (n: number) => T)(n);
      b.set(a);
      return b;
    };
    this.parent = g(this.parent);
    this.flags = g(this.flags);
    this.attr = g(this.attr);
    this.size = g(this.size);
    this.mtimeMs = g(this.mtimeMs);
    this.atimeMs = g(this.atimeMs);
    this.birthtimeMs = g(this.birthtimeMs);
    this.ino = g(this.ino);
    this.firstCluster = g(this.firstCluster);
    this.clusters = g(this.clusters);
    this.slot = g(this.slot);
    this.childStart = g(this.childStart);
    this.childCount = g(this.childCount);
    this.dirSlots = g(this.dirSlots);
  }
}
