/**
 * The write overlay: every sector the host wrote, kept so that reads return what the host last wrote
 * whatever the write-back did or did not apply. The synthesized bytes stay underneath; reads patch the
 * overlay's sectors over them. Held in memory, one 512-byte buffer per written sector in a Map keyed
 * by sector number (a sector map, not a page map, because hosts write 512-byte sectors and partial
 * pages would need a read-modify-write of synthesized data).
 *
 * `dirty` collects the data clusters written since the last apply, so the write-back knows which
 * clusters of existing files to copy into the source.
 */
import { SECTOR } from './layout.js';

export class Overlay {
  private readonly sectors = new Map<number, Buffer>();
  /** Sectors written since the last apply; cleared by the write-back once applied. */
  writesSinceApply = 0;

  get sectorCount(): number {
    return this.sectors.size;
  }

  get bytes(): number {
    return this.sectors.size * SECTOR;
  }

  /**
   * Stores `data` at `offset`. Partial sectors are merged with the current bytes, which `base`
   * provides (the synthesized bytes of that sector: only called for the first write of a sector).
   */
  async write(data: Uint8Array, offset: number, base: (target: Buffer, offset: number) => Promise<void>): Promise<void> {
    const end = offset + data.length;
    for (let s = Math.floor(offset / SECTOR); s * SECTOR < end; s++) {
      const sStart = s * SECTOR;
      const from = Math.max(offset, sStart);
      const to = Math.min(end, sStart + SECTOR);
      let buf = this.sectors.get(s);
      if (!buf) {
        buf = Buffer.alloc(SECTOR);
        if (to - from < SECTOR) await base(buf, sStart);
        // A concurrent write may have created it while the base was read: keep the first one.
        const again = this.sectors.get(s);
        if (again) buf = again;
        else this.sectors.set(s, buf);
      }
      buf.set(data.subarray(from - offset, to - offset), from - sStart);
      this.writesSinceApply++;
    }
  }

  /** Patches overlay sectors over `target`, which holds the synthesized bytes at `offset`. */
  patch(target: Uint8Array, offset: number): void {
    if (this.sectors.size === 0) return;
    const end = offset + target.length;
    for (let s = Math.floor(offset / SECTOR); s * SECTOR < end; s++) {
      const buf = this.sectors.get(s);
      if (!buf) continue;
      const sStart = s * SECTOR;
      const from = Math.max(offset, sStart);
      const to = Math.min(end, sStart + SECTOR);
      target.set(buf.subarray(from - sStart, to - sStart), from - offset);
    }
  }

  /** True when any sector of [offset, offset + length) was written. */
  touches(offset: number, length: number): boolean {
    if (this.sectors.size === 0) return false;
    for (let s = Math.floor(offset / SECTOR); s * SECTOR < offset + length; s++) if (this.sectors.has(s)) return true;
    return false;
  }
}
