/**
 * `bridge-agent expose`: a block device as MOUNTPOINT/disk.img, checked with tools we did not write
 * (dd, cmp, mkfs.ext4, mount -o loop, e2fsck) and with the process killed in the ways users kill it.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, statSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryBlockDevice } from '../../appliance/src/block/memory.js';
import { BlockFile } from '../../appliance/src/fuse/block-file.js';
import { startAgent, stopAgent } from '../helpers/agent.js';
import { dropCaches, mounted, sh } from '../helpers/exec.js';

const MiB = 1024 * 1024;
let dir = '';
let payload = '';

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'bridge-expose-'));
  payload = join(dir, 'payload.bin');
  writeFileSync(payload, randomBytes(256 * MiB));
});
afterAll(async () => {
  for (const m of ['mnt', 'mnt2', 'loop']) if (await mounted(join(dir, m))) await sh('umount', ['-l', join(dir, m)]);
  rmSync(dir, { recursive: true, force: true });
});

/** Writes the payload at an odd byte offset with dd, drops caches, reads it back and compares with cmp. */
async function roundTrip(file: string, offset: number): Promise<void> {
  await sh('dd', [`if=${payload}`, `of=${file}`, 'bs=1M', `seek=${offset}`, 'oflag=seek_bytes', 'conv=notrunc,fsync', 'status=none']);
  await dropCaches();
  await checkPayload(file, offset);
}

async function checkPayload(file: string, offset: number): Promise<void> {
  const copy = join(dir, 'readback.bin');
  await sh('dd', [`if=${file}`, `of=${copy}`, 'bs=1M', `skip=${offset}`, `count=${256 * MiB}`, 'iflag=skip_bytes,count_bytes', 'status=none']);
  await sh('cmp', [payload, copy]);
  rmSync(copy);
}

describe('bridge-agent expose', () => {
  it('serves memory:1G with the right size; unaligned 256 MiB round trip; SIGTERM leaves no mount', async () => {
    const mnt = join(dir, 'mnt');
    const agent = await startAgent(['expose', '--device', 'memory:1G', mnt], /serving/);
    try {
      expect(statSync(join(mnt, 'disk.img')).size).toBe(1024 * MiB);
      await roundTrip(join(mnt, 'disk.img'), 12_345_679);
      // Writing past the end of a block device fails instead of growing it.
      await expect(
        sh('dd', [
          'if=/dev/zero',
          `of=${join(mnt, 'disk.img')}`,
          'bs=4096',
          'count=2',
          `seek=${1024 * MiB - 4096}`,
          'oflag=seek_bytes',
          'conv=notrunc',
          'status=none',
        ]),
      ).rejects.toThrow();
    } finally {
      expect(await stopAgent(agent)).toBe(0);
    }
    expect(await mounted(mnt)).toBe(false);
  });

  it('keeps a file device across stop and re-expose', async () => {
    const mnt = join(dir, 'mnt');
    const img = join(dir, 'file.img');
    let agent = await startAgent(['expose', '--device', `file:${img}`, '--size', '1G', mnt], /serving/);
    try {
      await roundTrip(join(mnt, 'disk.img'), 777_777);
    } finally {
      await stopAgent(agent);
    }
    expect(statSync(img).size).toBe(1024 * MiB);
    agent = await startAgent(['expose', '--device', `file:${img}`, mnt], /serving/);
    try {
      await checkPayload(join(mnt, 'disk.img'), 777_777);
    } finally {
      await stopAgent(agent);
    }
    expect(await mounted(mnt)).toBe(false);
  });

  it('clears the stale mount a killed process left behind', async () => {
    const mnt = join(dir, 'mnt2');
    const img = join(dir, 'stale.img');
    const first = await startAgent(['expose', '--device', `file:${img}`, '--size', '64M', mnt], /serving/);
    await stopAgent(first, 'SIGKILL');
    expect(await mounted(mnt)).toBe(true); // the kernel keeps the dead mount
    const second = await startAgent(['expose', '--device', `file:${img}`, mnt], /serving/);
    try {
      expect(second.output()).toMatch(/stale FUSE mount/);
      expect(statSync(join(mnt, 'disk.img')).size).toBe(64 * MiB);
    } finally {
      await stopAgent(second);
    }
    expect(await mounted(mnt)).toBe(false);
  });

  it('refuses a mountpoint that a live process serves', async () => {
    const mnt = join(dir, 'mnt');
    const first = await startAgent(['expose', '--device', 'memory:16M', mnt], /serving/);
    try {
      const second = spawn(process.execPath, [join(import.meta.dirname, '../../dist/appliance/src/cli.js'), 'expose', '--device', 'memory:16M', mnt]);
      let err = '';
      second.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const code = await new Promise<number | null>((r) => second.on('exit', r));
      expect(code).not.toBe(0);
      expect(err).toMatch(/served by another live FUSE process/);
    } finally {
      await stopAgent(first);
    }
  });

  it('carries ext4: mkfs, loop mount, copy a tree in and out, e2fsck clean', async () => {
    const mnt = join(dir, 'mnt');
    const loop = join(dir, 'loop');
    const tree = join(dir, 'tree');
    for (let d = 0; d < 5; d++) {
      mkdirSync(join(tree, `dir${d}`, 'sub'), { recursive: true });
      for (let f = 0; f < 20; f++) writeFileSync(join(tree, `dir${d}`, f % 2 ? 'sub' : '', `file${f}.bin`), randomBytes(f * 9973));
    }
    const agent = await startAgent(['expose', '--device', 'memory:512M', mnt], /serving/);
    try {
      const disk = join(mnt, 'disk.img');
      await sh('mkfs.ext4', ['-q', '-F', disk]);
      mkdirSync(loop, { recursive: true });
      await sh('mount', ['-o', 'loop', disk, loop]);
      try {
        await sh('cp', ['-a', tree, join(loop, 'tree')]);
      } finally {
        await sh('umount', [loop]);
      }
      await dropCaches();
      await sh('e2fsck', ['-fn', disk]);
      await sh('mount', ['-o', 'loop,ro', disk, loop]);
      try {
        await sh('diff', ['-r', tree, join(loop, 'tree')]);
      } finally {
        await sh('umount', [loop]);
      }
    } finally {
      await stopAgent(agent);
    }
  });

  it('refuses writes on a read-only device', async () => {
    const mnt = join(dir, 'mnt');
    const img = join(dir, 'ro.img');
    writeFileSync(img, Buffer.alloc(MiB, 7));
    const agent = await startAgent(['expose', '--device', `file:${img}`, '--read-only', mnt], /serving/);
    try {
      await expect(sh('dd', ['if=/dev/zero', `of=${join(mnt, 'disk.img')}`, 'bs=512', 'count=1', 'conv=notrunc', 'status=none'])).rejects.toThrow(/Read-only/i);
      const head = await sh('od', ['-An', '-tx1', '-N4', join(mnt, 'disk.img')]);
      expect(head.trim()).toBe('07 07 07 07');
    } finally {
      await stopAgent(agent);
    }
  });
});

describe('BlockFile in-process', () => {
  it('routes fsync to the device flush and serves its own process without deadlock', async () => {
    const mnt = join(dir, 'mnt');
    let flushes = 0;
    const dev = new MemoryBlockDevice(32 * MiB);
    const flush = dev.flush.bind(dev);
    dev.flush = async () => {
      flushes++;
      await flush();
    };
    const bf = await BlockFile.expose(dev, mnt);
    try {
      // Async file access from the serving process itself goes through libuv's pool, not the loop.
      const { writeFile, readFile } = await import('node:fs/promises');
      await writeFile(join(mnt, 'disk.img'), Buffer.alloc(4096, 1), { flag: 'r+' });
      expect((await readFile(join(mnt, 'disk.img'))).subarray(0, 4096).every((b) => b === 1)).toBe(true);
      const before = flushes;
      await sh('dd', ['if=/dev/zero', `of=${join(mnt, 'disk.img')}`, 'bs=4096', 'count=1', 'conv=notrunc,fsync', 'status=none']);
      expect(flushes).toBeGreaterThan(before);
    } finally {
      await bf.close();
    }
    expect(await mounted(mnt)).toBe(false);
  });
});
