/**
 * The conformance suite must be able to fail: each deliberately broken device below must fail at
 * least one check. Guards against a suite that passes everything.
 */
import { describe, expect, it } from 'vitest';
import type { Extent } from '../../appliance/src/block/device.js';
import { MemoryBlockDevice } from '../../appliance/src/block/memory.js';
import { conformanceChecks, type ConformanceTarget } from './block-device.js';

const SIZE = 8 * 1024 * 1024;

async function failures(target: ConformanceTarget): Promise<string[]> {
  const failed: string[] = [];
  for (const [name, check] of Object.entries(conformanceChecks(target))) {
    await check().catch(() => failed.push(name));
  }
  return failed;
}

class TornWrites extends MemoryBlockDevice {
  override async write(data: Uint8Array, offset: number): Promise<void> {
    // Bug: a write that crosses a 4 KiB boundary keeps only its first part.
    const room = 4096 - (offset % 4096);
    await super.write(data.length > room ? data.subarray(0, room) : data, offset);
  }
}

class NoRangeCheck extends MemoryBlockDevice {
  override async read(target: Uint8Array, offset: number): Promise<void> {
    // Bug: reads past the end are clamped silently instead of failing.
    const n = Math.max(0, Math.min(target.length, this.size - offset));
    await super.read(target.subarray(0, n), offset);
  }
}

class LazyZero extends MemoryBlockDevice {
  // Bug: zero() and trim() do nothing.
  override async zero(): Promise<void> {}
  override async trim(): Promise<void> {}
}

class RacyWrites extends MemoryBlockDevice {
  override async write(data: Uint8Array, offset: number): Promise<void> {
    // Bug: the caller's buffer is read after an await; a reused buffer corrupts the write.
    await new Promise((r) => setImmediate(r));
    const copy = Buffer.from(data);
    copy[0] = (copy[0]! + 1) & 0xff;
    await super.write(copy, offset);
  }
}

class LyingExtents extends MemoryBlockDevice {
  // Bug: claims the whole range is a hole of zeros, data or not.
  override async extents(_offset: number, length: number): Promise<Extent[]> {
    return [{ length, hole: true, zero: true }];
  }
}

describe('the conformance suite catches broken devices', () => {
  it('catches torn writes across block boundaries', async () => {
    expect(await failures({ open: async () => new TornWrites(SIZE) })).toContain('keeps unaligned writes across internal boundaries exactly (model check)');
  });
  it('catches missing range checks', async () => {
    expect(await failures({ open: async () => new NoRangeCheck(SIZE) })).toContain('refuses I/O past the end with ERANGE and bad offsets with EINVAL');
  });
  it('catches zero/trim that do nothing', async () => {
    expect(await failures({ open: async () => new LazyZero(SIZE) })).toContain('zeroes and trims exactly the asked range');
  });
  it('catches corrupted writes', async () => {
    expect((await failures({ open: async () => new RacyWrites(SIZE) })).length).toBeGreaterThan(1);
  });
  it('catches a device that forgets its contents on reopen', async () => {
    const failed = await failures({ open: async () => new MemoryBlockDevice(SIZE), reopen: async () => new MemoryBlockDevice(SIZE) });
    expect(failed).toContain('keeps its contents across close and reopen');
  });
  it('catches extents that claim zeros over data', async () => {
    expect(await failures({ open: async () => new LyingExtents(SIZE) })).toContain('reports extents (when it can) that agree with its contents');
  });
  it('passes a correct device', async () => {
    expect(await failures({ open: async () => new MemoryBlockDevice(SIZE) })).toEqual([]);
  });
});
