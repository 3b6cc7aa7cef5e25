/**
 * A block device held in memory, allocated sparsely in pages so that `memory:1G` costs only what is
 * written. Not persistent. Used for demos, tests and benchmarks of the layers above.
 */
import { checkIo, isAllZero, Lifecycle, pushExtent, type BlockCapabilities, type BlockDevice, type Extent } from './device.js';

const PAGE = 1024 * 1024;

export class MemoryBlockDevice implements BlockDevice {
  readonly blockSize = 4096;
  readonly capabilities: BlockCapabilities = { writable: true, trim: true, persistent: false, resizable: true };
  private readonly pages = new Map<number, Buffer>();
  private readonly life = new Lifecycle();

  constructor(public size: number) {}

  /** Bytes of memory held by pages. */
  get allocated(): number {
    return this.pages.size * PAGE;
  }

  async read(target: Uint8Array, offset: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, target.length, false)) return;
    this.forEachPage(offset, target.length, (page, pageOff, bufOff, n) => {
      const p = this.pages.get(page);
      if (p) target.set(p.subarray(pageOff, pageOff + n), bufOff);
      else target.fill(0, bufOff, bufOff + n);
    });
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, data.length, true)) return;
    this.forEachPage(offset, data.length, (page, pageOff, bufOff, n) => {
      const src = data.subarray(bufOff, bufOff + n);
      let p = this.pages.get(page);
      if (!p) {
        if (isAllZero(src)) return; // zeros over a hole stay a hole
        // A write covering the whole page needs no zero-fill first.
        p = n === PAGE ? Buffer.allocUnsafe(PAGE) : Buffer.alloc(PAGE);
        this.pages.set(page, p);
      }
      p.set(src, pageOff);
    });
  }

  /** Pages never written (or trimmed whole) are holes that read as zeros. */
  async extents(offset: number, length: number): Promise<Extent[]> {
    this.life.check();
    const out: Extent[] = [];
    if (!checkIo(this, offset, length, false)) return out;
    this.forEachPage(offset, length, (page, _pageOff, _bufOff, n) => {
      const hole = !this.pages.has(page);
      pushExtent(out, n, hole, hole);
    });
    return out;
  }

  async flush(): Promise<void> {
    this.life.check();
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.zero(offset, length);
  }

  async zero(offset: number, length: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, length, true)) return;
    this.forEachPage(offset, length, (page, pageOff, _bufOff, n) => {
      const p = this.pages.get(page);
      if (!p) return;
      if (n === PAGE) this.pages.delete(page);
      else p.fill(0, pageOff, pageOff + n);
    });
  }

  async resize(newSize: number): Promise<void> {
    this.life.check();
    if (newSize < this.size) throw new Error(`cannot shrink a device from ${this.size} to ${newSize} bytes`);
    this.size = newSize;
  }

  async close(): Promise<void> {
    if (this.life.close()) this.pages.clear();
  }

  private forEachPage(offset: number, length: number, fn: (page: number, pageOff: number, bufOff: number, n: number) => void): void {
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const page = Math.floor(pos / PAGE);
      const pageOff = pos - page * PAGE;
      const n = Math.min(PAGE - pageOff, end - pos);
      fn(page, pageOff, pos - offset, n);
      pos += n;
    }
  }
}
