/**
 * The block-device conformance suite. Every BlockDevice implementation runs it (see the
 * `*.conformance.test.ts` files) so that stages can be stacked without surprises.
 *
 * The suite never assumes a device's initial contents: it reads a window first and keeps a model of
 * what it wrote. Windows cover the device's start and its last bytes.
 */
import { describe, expect, it as vitestIt } from 'vitest';
import { isAllZero, type BlockDevice } from '../../appliance/src/block/device.js';
import { isBridgeError } from '../../shared/src/errors.js';
import { Rng } from '../helpers/random.js';

export interface ConformanceTarget {
  /** A fresh device (a new one per test). */
  open(): Promise<BlockDevice>;
  /** Persistent devices: open the same device again after close(). */
  reopen?(): Promise<BlockDevice>;
  /** Called after each test to release what open() made (temp files, servers). */
  cleanup?(): Promise<void>;
  /** Internal boundaries worth straddling (chunk size, cluster size, page size); 4096 is always used. */
  boundaries?: number[];
  /** Seed for the random parts (defaults to a fixed one so failures reproduce). */
  seed?: number;
}

const WINDOW = 2 * 1024 * 1024;

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, `expected an error with code ${code}`).not.toBeNull();
  expect(isBridgeError(err) ? err.code : (err as { code?: string }).code).toBe(code);
}

async function readAt(dev: BlockDevice, offset: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length, 0xa5); // poison: a device that does not fill the buffer fails
  await dev.read(b, offset);
  return b;
}

/** Start offsets of the windows the suite works in: the device's head and its tail. */
function windows(dev: BlockDevice): { start: number; length: number }[] {
  const len = Math.min(WINDOW, dev.size);
  const tailStart = Math.max(len, dev.size - len);
  const out = [{ start: 0, length: len }];
  if (tailStart < dev.size) out.push({ start: tailStart, length: dev.size - tailStart });
  return out;
}

/** The checks, as plain functions so that a meta-test can prove they catch broken devices. */
export function conformanceChecks(target: ConformanceTarget): Record<string, () => Promise<void>> {
  const seed = target.seed ?? 20261122;
  const boundaries = [4096, ...(target.boundaries ?? [])];
  const checks: Record<string, () => Promise<void>> = {};
  const it = (name: string, fn: () => Promise<void>): void => {
    checks[name] = fn;
  };

  async function withDevice(fn: (dev: BlockDevice) => Promise<void>): Promise<void> {
    const dev = await target.open();
    try {
      await fn(dev);
    } finally {
      await dev.close().catch(() => undefined);
      await target.cleanup?.();
    }
  }

  {
    it('reports a sane size and block size', () =>
      withDevice(async (dev) => {
        expect(Number.isSafeInteger(dev.size) && dev.size > 0).toBe(true);
        expect(dev.blockSize > 0 && (dev.blockSize & (dev.blockSize - 1)) === 0).toBe(true);
      }));

    it('accepts zero-length I/O anywhere in bounds, including at the end', () =>
      withDevice(async (dev) => {
        await dev.read(Buffer.alloc(0), 0);
        await dev.read(Buffer.alloc(0), dev.size);
        if (dev.capabilities.writable) {
          await dev.write(Buffer.alloc(0), 0);
          await dev.write(Buffer.alloc(0), dev.size);
        }
      }));

    it('refuses I/O past the end with ERANGE and bad offsets with EINVAL', () =>
      withDevice(async (dev) => {
        await expectCode(dev.read(Buffer.alloc(1), dev.size), 'ERANGE');
        await expectCode(dev.read(Buffer.alloc(2), dev.size - 1), 'ERANGE');
        await expectCode(dev.read(Buffer.alloc(1), -1), 'EINVAL');
        if (dev.capabilities.writable) {
          await expectCode(dev.write(Buffer.alloc(1), dev.size), 'ERANGE');
          await expectCode(dev.write(Buffer.alloc(4096), dev.size - 4095), 'ERANGE');
          await expectCode(dev.zero(dev.size - 1, 2), 'ERANGE');
        } else {
          await expectCode(dev.write(Buffer.alloc(1), 0), 'EROFS');
        }
        // The last byte itself is readable.
        await readAt(dev, dev.size - 1, 1);
      }));

    it('returns the same bytes for unaligned reads as for one aligned read', () =>
      withDevice(async (dev) => {
        const rng = new Rng(seed);
        for (const w of windows(dev)) {
          const whole = await readAt(dev, w.start, w.length);
          for (let i = 0; i < 64; i++) {
            const b = rng.pick(boundaries);
            // Straddle an internal boundary inside the window when we can, else anywhere.
            const cross = w.start + Math.min(w.length - 1, Math.max(0, Math.ceil(w.start / b) * b - w.start + b * rng.int(0, 3)));
            const off = Math.max(w.start, Math.min(w.start + w.length - 1, cross - rng.int(0, 700)));
            const len = rng.int(1, Math.min(3 * b + 17, w.start + w.length - off));
            const got = await readAt(dev, off, len);
            expect(got.equals(whole.subarray(off - w.start, off - w.start + len)), `read at ${off}+${len}`).toBe(true);
          }
        }
      }));

    it('keeps unaligned writes across internal boundaries exactly (model check)', () =>
      withDevice(async (dev) => {
        if (!dev.capabilities.writable) return;
        const rng = new Rng(seed + 1);
        for (const w of windows(dev)) {
          const model = await readAt(dev, w.start, w.length);
          for (let i = 0; i < 120; i++) {
            const b = rng.pick(boundaries);
            const k = rng.int(1, Math.max(1, Math.floor(w.length / b) - 1));
            const off = Math.max(w.start, Math.min(w.start + w.length - 1, w.start + k * b - rng.int(0, 600)));
            const len = rng.int(1, Math.min(2 * b + 333, w.start + w.length - off));
            const data = rng.bytes(len);
            await dev.write(data, off);
            data.copy(model, off - w.start);
            if (i % 10 === 9) {
              const roff = w.start + rng.int(0, w.length - 1);
              const rlen = rng.int(1, w.start + w.length - roff);
              const got = await readAt(dev, roff, rlen);
              expect(got.equals(model.subarray(roff - w.start, roff - w.start + rlen)), `read at ${roff}+${rlen} after writes`).toBe(true);
            }
          }
          expect((await readAt(dev, w.start, w.length)).equals(model)).toBe(true);
        }
        // Single bytes at the very end.
        await dev.write(Buffer.from([0x5a]), dev.size - 1);
        expect((await readAt(dev, dev.size - 1, 1))[0]).toBe(0x5a);
      }));

    it('handles concurrent operations on overlapping ranges', () =>
      withDevice(async (dev) => {
        if (!dev.capabilities.writable) {
          // Concurrent reads agree with one sequential read.
          const len = Math.min(WINDOW, dev.size);
          const whole = await readAt(dev, 0, len);
          const rng = new Rng(seed + 2);
          const reqs = Array.from({ length: 48 }, () => {
            const off = rng.int(0, len - 1);
            return { off, len: rng.int(1, Math.min(200_000, len - off)) };
          });
          const got = await Promise.all(reqs.map((r) => readAt(dev, r.off, r.len)));
          reqs.forEach((r, i) => expect(got[i]!.equals(whole.subarray(r.off, r.off + r.len))).toBe(true));
          return;
        }
        const span = Math.min(WINDOW, dev.size);
        const rng = new Rng(seed + 2);
        // Disjoint concurrent writes land exactly.
        const slots = 16;
        const slot = Math.floor(span / slots);
        const datas = Array.from({ length: slots }, () => rng.bytes(slot - 5));
        await Promise.all(datas.map((d, i) => dev.write(d, i * slot + 3)));
        for (let i = 0; i < slots; i++) expect((await readAt(dev, i * slot + 3, slot - 5)).equals(datas[i]!)).toBe(true);
        // Overlapping concurrent writes with distinct fill bytes: every byte ends as one of the writers'
        // values that covered it; concurrent reads see, per byte, an old value or a written one.
        const before = await readAt(dev, 0, span);
        const writes = Array.from({ length: 24 }, (_, i) => {
          const off = rng.int(0, span - 2);
          return { off, len: rng.int(1, Math.min(300_000, span - off)), fill: i + 1 };
        });
        const reads = Array.from({ length: 12 }, () => {
          const off = rng.int(0, span - 2);
          return { off, len: rng.int(1, Math.min(300_000, span - off)) };
        });
        const readResults = await Promise.all([
          ...writes.map((w) => dev.write(Buffer.alloc(w.len, w.fill), w.off).then(() => null)),
          ...reads.map((r) => readAt(dev, r.off, r.len)),
        ]);
        const after = await readAt(dev, 0, span);
        const allowed = (pos: number, v: number, includeOld: boolean): boolean =>
          (includeOld && before[pos] === v) || writes.some((w) => w.fill === v && pos >= w.off && pos < w.off + w.len);
        for (let pos = 0; pos < span; pos++) {
          const covered = writes.some((w) => pos >= w.off && pos < w.off + w.len);
          if (!covered) {
            if (after[pos] !== before[pos]) throw new Error(`byte ${pos} changed without a write covering it`);
          } else if (!allowed(pos, after[pos]!, false)) {
            throw new Error(`byte ${pos} is ${after[pos]}, which no write covering it wrote`);
          }
        }
        reads.forEach((r, i) => {
          const got = readResults[writes.length + i] as Buffer;
          for (let j = 0; j < r.len; j++) if (!allowed(r.off + j, got[j]!, true)) throw new Error(`concurrent read saw byte ${r.off + j} = ${got[j]}`);
        });
      }));

    it('zeroes and trims exactly the asked range', () =>
      withDevice(async (dev) => {
        if (!dev.capabilities.writable) return;
        const rng = new Rng(seed + 3);
        const span = Math.min(WINDOW, dev.size);
        const data = rng.bytes(span);
        await dev.write(data, 0);
        const zOff = Math.min(span - 1, 4096 * 3 + 100);
        const zLen = Math.min(span - zOff, 4096 * 40 + 7);
        await dev.zero(zOff, zLen);
        const tOff = Math.min(span - 1, zOff + zLen + 12345);
        const tLen = Math.min(span - tOff, 128 * 1024 * 2 + 3);
        await dev.trim(tOff, tLen);
        data.fill(0, zOff, zOff + zLen);
        data.fill(0, tOff, tOff + tLen);
        expect((await readAt(dev, 0, span)).equals(data)).toBe(true);
      }));

    it('reports extents (when it can) that agree with its contents', () =>
      withDevice(async (dev) => {
        if (!dev.extents) return;
        const rng = new Rng(seed + 5);
        if (dev.capabilities.writable) {
          await dev.write(rng.bytes(5000), 4096 * 7 + 3);
          await dev.zero(4096 * 40, 4096 * 3);
        }
        for (const w of windows(dev)) {
          const data = await readAt(dev, w.start, w.length);
          for (const [off, len] of [
            [w.start, w.length],
            [w.start + 1234, Math.max(1, w.length - 5000)],
          ] as const) {
            const ext = await dev.extents(off, len);
            expect(ext.length, `extents at ${off}+${len}`).toBeGreaterThan(0);
            let pos = off;
            for (const e of ext) {
              expect(Number.isSafeInteger(e.length) && e.length > 0, `extent length ${e.length}`).toBe(true);
              // A range claimed to read as zeros must really do so.
              if (e.zero) expect(isAllZero(data.subarray(pos - w.start, pos - w.start + e.length)), `zero extent at ${pos}+${e.length}`).toBe(true);
              pos += e.length;
            }
            expect(pos - off, 'extents cover at most what was asked').toBeLessThanOrEqual(len);
          }
        }
        await expectCode(dev.extents(dev.size - 1, 2), 'ERANGE');
      }));

    it('flushes, then refuses use after close', async () => {
      const dev = await target.open();
      try {
        if (dev.capabilities.writable) await dev.write(Buffer.from('flush me'), 100);
        await dev.flush();
        await dev.flush(); // flushing twice with nothing new is fine
      } finally {
        await dev.close();
      }
      await dev.close(); // closing twice is harmless
      await expectCode(dev.read(Buffer.alloc(1), 0), 'CLOSED');
      await target.cleanup?.();
    });

    if (target.reopen) {
      const reopen = target.reopen;
      it('keeps its contents across close and reopen', async () => {
        const dev = await target.open();
        const rng = new Rng(seed + 4);
        const pieces: { off: number; data: Buffer }[] = [];
        try {
          if (!dev.capabilities.writable) return;
          for (let i = 0; i < 20; i++) {
            const len = rng.int(1, 70_000);
            const off = rng.int(0, dev.size - len);
            const data = rng.bytes(len);
            pieces.push({ off, data });
          }
          // Written in order, so where pieces overlap the later one wins.
          for (const p of pieces) await dev.write(p.data, p.off);
          const expected = pieces.map((p, i) => {
            const e = Buffer.from(p.data);
            for (const later of pieces.slice(i + 1)) {
              const from = Math.max(p.off, later.off);
              const to = Math.min(p.off + p.data.length, later.off + later.data.length);
              if (from < to) later.data.copy(e, from - p.off, from - later.off, to - later.off);
            }
            return e;
          });
          await dev.flush();
          await dev.close();
          const again = await reopen();
          try {
            for (let i = 0; i < pieces.length; i++) {
              expect((await readAt(again, pieces[i]!.off, pieces[i]!.data.length)).equals(expected[i]!)).toBe(true);
            }
          } finally {
            await again.close();
          }
        } finally {
          await dev.close().catch(() => undefined);
          await target.cleanup?.();
        }
      });
    }
  }
  return checks;
}

/** Registers the suite with vitest for one implementation. */
export function blockDeviceConformance(name: string, target: ConformanceTarget): void {
  describe(`BlockDevice conformance: ${name}`, () => {
    for (const [check, fn] of Object.entries(conformanceChecks(target))) vitestIt(check, fn);
  });
}
