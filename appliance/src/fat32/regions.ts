/**
 * The virtual disk as non-overlapping regions covering [0, size), after nbdkit's common/regions:
 * each region is fixed bytes, zeros, a FAT copy, a directory's clusters or a file's clusters.
 * Held in typed arrays (one row per region) so 100,000 files cost a few MB; found by binary search.
 */

export const enum RegionKind {
  Zero = 0,
  Bytes = 1,
  Fat = 2,
  Dir = 3,
  File = 4,
}

export interface RegionSpec {
  /** Disk byte offset of the region's first byte. */
  start: number;
  kind: RegionKind;
  /** Bytes: index into the buffers list; Dir/File: entry index. */
  owner: number;
  /** Byte offset into the owner's data (FAT copy, directory bytes, file bytes) at `start`. */
  base: number;
}

export class Regions {
  readonly start: Float64Array;
  readonly kind: Uint8Array;
  readonly owner: Int32Array;
  readonly base: Float64Array;

  /** `specs` must be sorted by start, start at 0, and leave no gaps (a region ends where the next starts). */
  constructor(
    specs: RegionSpec[],
    readonly size: number,
  ) {
    const n = specs.length;
    this.start = new Float64Array(n + 1);
    this.kind = new Uint8Array(n);
    this.owner = new Int32Array(n);
    this.base = new Float64Array(n);
    specs.forEach((s, i) => {
      if (i > 0 && s.start <= specs[i - 1]!.start) throw new Error(`regions out of order at ${s.start}`);
      this.start[i] = s.start;
      this.kind[i] = s.kind;
      this.owner[i] = s.owner;
      this.base[i] = s.base;
    });
    this.start[n] = size; // sentinel: the end of the last region
    if (n === 0 || this.start[0] !== 0) throw new Error('regions must start at offset 0');
  }

  /**
   * Regions from columns already sorted by start (no copies, no per-region objects): for the data
   * area of a large tree. `start` holds count + 1 values, the last one the device size.
   */
  static fromColumns(start: Float64Array, kind: Uint8Array, owner: Int32Array, base: Float64Array, size: number): Regions {
    const r = Object.create(Regions.prototype) as { -readonly [K in keyof Regions]: Regions[K] };
    r.start = start;
    r.kind = kind;
    r.owner = owner;
    r.base = base;
    r.size = size;
    return r as Regions;
  }

  get count(): number {
    return this.kind.length;
  }

  /** Index of the region holding byte `offset` (0 <= offset < size). */
  find(offset: number): number {
    let lo = 0;
    let hi = this.kind.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.start[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  end(i: number): number {
    return this.start[i + 1]!;
  }
}
