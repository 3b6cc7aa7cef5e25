/**
 * Reply buffers kept for reuse. A fresh 256 KiB buffer per read costs page faults on first touch
 * (glibc hands large allocations out as new mappings); reusing a few per size class avoids them.
 */
const MIN_CLASS = 64 * 1024;

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;

  constructor(private readonly maxPooledBytes = 16 * 1024 * 1024) {}

  /** A buffer of exactly `length` bytes (uninitialised), backed by a poolable allocation. */
  take(length: number): Buffer {
    const cap = length <= MIN_CLASS ? MIN_CLASS : 2 ** Math.ceil(Math.log2(length));
    const list = this.free.get(cap);
    const b = list?.pop();
    if (b) {
      this.pooledBytes -= cap;
      return b.subarray(0, length);
    }
    return Buffer.allocUnsafeSlow(cap).subarray(0, length);
  }

  /** Returns a buffer from take() once nothing uses it any more. */
  give(b: Buffer): void {
    const cap = b.buffer.byteLength;
    if (this.pooledBytes + cap > this.maxPooledBytes) return;
    let list = this.free.get(cap);
    if (!list) this.free.set(cap, (list = []));
    list.push(Buffer.from(b.buffer, 0, cap));
    this.pooledBytes += cap;
  }
}
