/**
 * A set of non-negative integers (sector or cluster numbers) as a sparse bitmap: one 4 KiB chunk
 * (32,768 bits) per range that holds any member, so memory follows what was touched, never the
 * size of the disk (a 10 GB copy marks 20 million sectors in 2.5 MB).
 */
export const CHUNK_BITS = 32768;
const CHUNK_BYTES = CHUNK_BITS / 8;

export class SparseBitmap {
  private readonly chunks = new Map<number, { bits: Uint8Array; count: number }>();
  private total = 0;

  get size(): number {
    return this.total;
  }

  /** Bytes held by the chunks. */
  get memoryBytes(): number {
    return this.chunks.size * CHUNK_BYTES;
  }

  /** Members in chunk `k` ([k × 32768, (k + 1) × 32768)). */
  countInChunk(k: number): number {
    return this.chunks.get(k)?.count ?? 0;
  }

  has(n: number): boolean {
    const c = this.chunks.get(Math.floor(n / CHUNK_BITS));
    if (!c) return false;
    const b = n % CHUNK_BITS;
    return (c.bits[b >> 3]! & (1 << (b & 7))) !== 0;
  }

  add(n: number): void {
    const k = Math.floor(n / CHUNK_BITS);
    let c = this.chunks.get(k);
    if (!c) this.chunks.set(k, (c = { bits: new Uint8Array(CHUNK_BYTES), count: 0 }));
    const b = n % CHUNK_BITS;
    const m = 1 << (b & 7);
    if (c.bits[b >> 3]! & m) return;
    c.bits[b >> 3]! |= m;
    c.count++;
    this.total++;
  }

  delete(n: number): void {
    const k = Math.floor(n / CHUNK_BITS);
    const c = this.chunks.get(k);
    if (!c) return;
    const b = n % CHUNK_BITS;
    const m = 1 << (b & 7);
    if (!(c.bits[b >> 3]! & m)) return;
    c.bits[b >> 3]! &= ~m;
    this.total--;
    if (--c.count === 0) this.chunks.delete(k);
  }

  /** Adds [from, to). */
  addRange(from: number, to: number): void {
    for (let n = from; n < to; n++) this.add(n);
  }

  /** Deletes [from, to). */
  deleteRange(from: number, to: number): void {
    for (let n = from; n < to;) {
      const k = Math.floor(n / CHUNK_BITS);
      const end = Math.min(to, (k + 1) * CHUNK_BITS);
      if (!this.chunks.has(k)) n = end;
      else for (; n < end; n++) this.delete(n);
    }
  }

  /** True when any member lies in [from, to). */
  any(from: number, to: number): boolean {
    for (let n = from; n < to;) {
      const k = Math.floor(n / CHUNK_BITS);
      const end = Math.min(to, (k + 1) * CHUNK_BITS);
      const c = this.chunks.get(k);
      if (c) {
        if (n === k * CHUNK_BITS && end === (k + 1) * CHUNK_BITS) return true;
        // Bit by bit to a byte boundary, then whole bytes.
        let i = n - k * CHUNK_BITS;
        const e = end - k * CHUNK_BITS;
        for (; i < e && i & 7; i++) if (c.bits[i >> 3]! & (1 << (i & 7))) return true;
        for (; i + 8 <= e; i += 8) if (c.bits[i >> 3]) return true;
        for (; i < e; i++) if (c.bits[i >> 3]! & (1 << (i & 7))) return true;
      }
      n = end;
    }
    return false;
  }

  clear(): void {
    this.chunks.clear();
    this.total = 0;
  }

  /** Members in increasing order. */
  *values(): IterableIterator<number> {
    for (const k of [...this.chunks.keys()].sort((a, b) => a - b)) {
      const c = this.chunks.get(k);
      if (!c) continue;
      for (let i = 0; i < CHUNK_BYTES; i++) {
        const byte = c.bits[i]!;
        if (byte === 0) continue;
        for (let j = 0; j < 8; j++) if (byte & (1 << j)) yield k * CHUNK_BITS + i * 8 + j;
      }
    }
  }

  /** Members as runs [start, length, start, length, ...] in increasing order. */
  runs(): number[] {
    const out: number[] = [];
    for (const n of this.values()) {
      const last = out.length - 2;
      if (last >= 0 && out[last]! + out[last + 1]! === n) out[last + 1]!++;
      else out.push(n, 1);
    }
    return out;
  }

  static fromRuns(runs: readonly number[]): SparseBitmap {
    const b = new SparseBitmap();
    for (let i = 0; i + 1 < runs.length; i += 2) b.addRange(runs[i]!, runs[i]! + runs[i + 1]!);
    return b;
  }
}
