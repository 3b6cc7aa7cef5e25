/**
 * The write overlay: every sector the host wrote and the write-back has not yet handed to the
 * source, kept so that reads return what the host last wrote whatever was or was not applied. The
 * synthesized bytes stay underneath; reads patch the overlay's sectors over them.
 *
 * On disk, not in memory: the disk is cut into 16 MiB regions, and region N's written sectors live
 * in the sparse file OVERLAY_DIR/r-N at their offset within the region (no allocation table: a
 * sector's place is its address). In memory there is only a sparse bitmap of the sectors present
 * (4 KiB per region touched). Once a flush has applied a file's data to the source, its sectors are
 * dropped (`drop`): a region left empty is deleted, a region mostly dropped is rewritten with only
 * its live sectors (there is no hole punching from Node), so disk use follows what is pending.
 *
 * `persist` makes the overlay durable (fdatasync of every region written since, then the index of
 * present sectors, written atomically): the write-back calls it at a flush that leaves host writes
 * unapplied, so that a restarted agent restores the host's view (see session.ts).
 */
import { constants as fsc, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../durable.js';
import { CHUNK_BITS, SparseBitmap } from './bitmap.js';
import { SECTOR } from './layout.js';

/** Sectors per region: one bitmap chunk, 16 MiB. */
const REGION_SECTORS = CHUNK_BITS;
const REGION_BYTES = REGION_SECTORS * SECTOR;
const MAX_OPEN = 32;
export const OVERLAY_INDEX = 'overlay.index';

export type BaseReader = (target: Buffer, offset: number) => Promise<void>;

export class Overlay {
  private present = new SparseBitmap();
  private readonly open = new Map<number, Promise<FileHandle>>();
  /** Regions written since the last persist. */
  private readonly unsynced = new Set<number>();
  private writing: Promise<void> = Promise.resolve();
  /** Sectors written since the last apply; cleared by the write-back once applied. */
  writesSinceApply = 0;

  constructor(readonly dir: string) {}

  get sectorCount(): number {
    return this.present.size;
  }

  get bytes(): number {
    return this.present.size * SECTOR;
  }

  /** Memory held for the index of present sectors. */
  get memoryBytes(): number {
    return this.present.memoryBytes;
  }

  private regionPath(r: number): string {
    return join(this.dir, `r-${r}`);
  }

  private handle(r: number): Promise<FileHandle> {
    let h = this.open.get(r);
    if (h) {
      this.open.delete(r);
      this.open.set(r, h);
      return h;
    }
    h = fsp.mkdir(this.dir, { recursive: true }).then(() => fsp.open(this.regionPath(r), fsc.O_RDWR | fsc.O_CREAT | fsc.O_NOFOLLOW, 0o600));
    this.open.set(r, h);
    h.catch(() => this.open.delete(r));
    for (const [k, old] of this.open) {
      if (this.open.size <= MAX_OPEN) break;
      this.open.delete(k);
      void old.then((fh) => fh.close()).catch(() => undefined);
    }
    return h;
  }

  /** Forgets region r's descriptor; a read that took it just before still finishes (closed a second later). */
  private retire(r: number): void {
    const h = this.open.get(r);
    this.open.delete(r);
    if (h) setTimeout(() => void h.then((fh) => fh.close()).catch(() => undefined), 1000).unref();
  }

  private async closeRegion(r: number): Promise<void> {
    const h = this.open.get(r);
    this.open.delete(r);
    if (h) await (await h).close().catch(() => undefined);
  }

  /**
   * Stores `data` at disk offset `offset`. A sector written only in part is first filled with its
   * current bytes: the overlay's own when present, else the synthesized ones (`base`). Writes are
   * serialized so that two partial writes of one sector cannot lose each other's bytes.
   */
  write(data: Uint8Array, offset: number, base: BaseReader): Promise<void> {
    const run = this.writing.then(() => this.doWrite(data, offset, base));
    this.writing = run.catch(() => undefined);
    return run;
  }

  private async doWrite(data: Uint8Array, offset: number, base: BaseReader): Promise<void> {
    const end = offset + data.length;
    for (let pos = offset; pos < end;) {
      const r = Math.floor(pos / REGION_BYTES);
      const segEnd = Math.min(end, (r + 1) * REGION_BYTES);
      const sFirst = Math.floor(pos / SECTOR);
      const sEnd = Math.ceil(segEnd / SECTOR);
      const fh = await this.handle(r);
      const within = (sFirst - r * REGION_SECTORS) * SECTOR;
      let buf: Buffer;
      if (pos % SECTOR === 0 && segEnd % SECTOR === 0) {
        buf = Buffer.from(data.buffer, data.byteOffset + (pos - offset), segEnd - pos);
      } else {
        buf = Buffer.alloc((sEnd - sFirst) * SECTOR);
        const fill = async (s: number, at: number): Promise<void> => {
          const part = buf.subarray(at, at + SECTOR);
          if (this.present.has(s)) await fh.read(part, 0, SECTOR, (s - r * REGION_SECTORS) * SECTOR);
          else await base(part, s * SECTOR);
        };
        if (pos % SECTOR !== 0) await fill(sFirst, 0);
        if (segEnd % SECTOR !== 0 && (sEnd - 1 !== sFirst || pos % SECTOR === 0)) await fill(sEnd - 1, buf.length - SECTOR);
        buf.set(data.subarray(pos - offset, segEnd - offset), pos - sFirst * SECTOR);
      }
      await writeFully(fh, buf, within);
      this.present.addRange(sFirst, sEnd);
      this.unsynced.add(r);
      this.writesSinceApply += sEnd - sFirst;
      pos = segEnd;
    }
  }

  /** Patches overlay sectors over `target`, which holds the bytes underneath at `offset`. */
  async patch(target: Uint8Array, offset: number): Promise<void> {
    if (this.present.size === 0) return;
    const end = offset + target.length;
    const sLast = Math.ceil(end / SECTOR);
    for (let s = Math.floor(offset / SECTOR); s < sLast;) {
      if (!this.present.has(s)) {
        s++;
        continue;
      }
      // A run of present sectors within one region: one read.
      const r = Math.floor(s / REGION_SECTORS);
      const regionEnd = Math.min(sLast, (r + 1) * REGION_SECTORS);
      let t = s + 1;
      while (t < regionEnd && this.present.has(t)) t++;
      const from = Math.max(offset, s * SECTOR);
      const to = Math.min(end, t * SECTOR);
      const fh = await this.handle(r);
      const part = Buffer.from(target.buffer, target.byteOffset + (from - offset), to - from);
      const { bytesRead } = await fh.read(part, 0, part.length, from - r * REGION_BYTES);
      if (bytesRead < part.length) part.fill(0, bytesRead); // never written past the file's end
      s = t;
    }
  }

  /** True when any sector of [offset, offset + length) is in the overlay. */
  touches(offset: number, length: number): boolean {
    return this.present.size > 0 && this.present.any(Math.floor(offset / SECTOR), Math.ceil((offset + length) / SECTOR));
  }

  /** Forgets the whole sectors inside [offset, offset + length): reads fall through to what lies underneath. */
  drop(offset: number, length: number): void {
    this.present.deleteRange(Math.ceil(offset / SECTOR), Math.floor((offset + length) / SECTOR));
  }

  /**
   * Gives back disk space after drops: an empty region file is deleted; one whose allocated size
   * exceeds four times its live sectors (plus 1 MiB) is rewritten with the live sectors only.
   */
  compact(): Promise<void> {
    // In the write queue: a write in flight must not land in a region file being replaced.
    const run = this.writing.then(() => this.doCompact());
    this.writing = run.catch(() => undefined);
    return run;
  }

  private async doCompact(): Promise<void> {
    let names: string[];
    try {
      names = await fsp.readdir(this.dir);
    } catch {
      return;
    }
    for (const name of names) {
      const m = /^r-(\d+)$/.exec(name);
      if (!m) continue;
      const r = Number(m[1]);
      const live = this.present.countInChunk(r);
      if (live === 0) {
        this.retire(r);
        await fsp.rm(this.regionPath(r), { force: true });
        this.unsynced.delete(r);
        continue;
      }
      const st = await fsp.stat(this.regionPath(r));
      if (st.blocks * 512 <= 4 * live * SECTOR + 1024 * 1024) continue;
      const tmp = `${this.regionPath(r)}.tmp`;
      const out = await fsp.open(tmp, 'w', 0o600);
      try {
        const old = await this.handle(r);
        const buf = Buffer.alloc(256 * 1024);
        const runs = this.present.runs();
        for (let i = 0; i < runs.length; i += 2) {
          const from = Math.max(runs[i]!, r * REGION_SECTORS);
          const to = Math.min(runs[i]! + runs[i + 1]!, (r + 1) * REGION_SECTORS);
          for (let s = from; s < to;) {
            const n = Math.min(to - s, buf.length / SECTOR);
            const at = (s - r * REGION_SECTORS) * SECTOR;
            const part = buf.subarray(0, n * SECTOR);
            const { bytesRead } = await old.read(part, 0, part.length, at);
            part.fill(0, bytesRead);
            await writeFully(out, part, at);
            s += n;
          }
        }
        await out.datasync();
      } finally {
        await out.close();
      }
      this.retire(r);
      await fsp.rename(tmp, this.regionPath(r));
      this.unsynced.add(r); // its directory entry changed: synced with the next persist
    }
  }

  /** Makes the overlay durable: region data fdatasynced, then the index of present sectors written atomically. */
  persist(): Promise<void> {
    const run = this.writing.then(() => this.doPersist());
    this.writing = run.catch(() => undefined);
    return run;
  }

  private async doPersist(): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true });
    for (const r of this.unsynced) {
      if (this.present.countInChunk(r) === 0) continue;
      await (await this.handle(r)).datasync();
    }
    this.unsynced.clear();
    await writeFileAtomic(join(this.dir, OVERLAY_INDEX), Buffer.from(new Float64Array(this.present.runs()).buffer));
  }

  /** Loads the index a persist wrote (a resumed session). */
  async load(): Promise<void> {
    const raw = await fsp.readFile(join(this.dir, OVERLAY_INDEX));
    const runs = new Float64Array(raw.buffer, raw.byteOffset, Math.floor(raw.length / 8));
    this.present = SparseBitmap.fromRuns(Array.from(runs));
  }

  async close(): Promise<void> {
    for (const r of [...this.open.keys()]) await this.closeRegion(r);
  }

  /** Closes and deletes every overlay file (the session needs them no more). */
  async destroy(): Promise<void> {
    await this.close();
    await fsp.rm(this.dir, { recursive: true, force: true });
    this.present.clear();
    this.unsynced.clear();
  }
}

async function writeFully(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < buf.length;) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    done += bytesWritten;
  }
}
