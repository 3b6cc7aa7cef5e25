/**
 * A raw disk source (`"raw": true`): the image itself is the iSCSI LUN (tgtd opens it, no FUSE file,
 * no kernel mount), read-write or read-only; a mount stage can still mount a raw disk's filesystem.
 * Checked with libiscsi's tools and qemu-img/qemu-io.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, openSync, readFileSync, readSync, closeSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/ports.js';
import { AgentProcess, leftovers, sh } from './agent-process.js';
import { wholeExt4 } from './disk-images.js';

const SIZE = 32 * 1024 * 1024;
const CHAP = 'raw-chap-secret-1';
const IQN = 'iqn.2026-11.org.bridge:ntfs';
const IQN_RO = 'iqn.2026-11.org.bridge:ntfs-ro';

/** An MBR disk whose partition 1 (type 07) starts with an NTFS boot sector; the rest random. */
function ntfsLikeDisk(path: string): void {
  const disk = randomBytes(SIZE);
  disk.fill(0, 0, 512);
  // Partition 1: type 0x07 (NTFS/exFAT) from sector 2048 to the end.
  const e = 446;
  disk[e + 4] = 0x07;
  disk.writeUInt32LE(2048, e + 8);
  disk.writeUInt32LE(SIZE / 512 - 2048, e + 12);
  disk[510] = 0x55;
  disk[511] = 0xaa;
  const boot = 2048 * 512;
  disk.write('\xebR\x90NTFS    ', boot, 'latin1');
  disk[boot + 510] = 0x55;
  disk[boot + 511] = 0xaa;
  writeFileSync(path, disk);
}

function readAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

describe('raw disk source over iSCSI', () => {
  let dir = '';
  let agent: AgentProcess;
  let port = 0;
  const url = (iqn: string): string => `iscsi://ruser%${CHAP}@127.0.0.1:${port}/${iqn}/1`;

  beforeAll(async () => {
    dir = AgentProcess.tempDir('bridge-rawdisk-');
    port = await freePort();
    ntfsLikeDisk(join(dir, 'ntfs.img'));
    ntfsLikeDisk(join(dir, 'ntfs-ro.img'));
    await wholeExt4(join(dir, 'ext4.img'), 16, { 'raw.txt': 'mounted from a raw disk\n' });
    agent = new AgentProcess(
      dir,
      {
        version: 1,
        runtimeDir: join(dir, 'run'),
        listen: { address: '127.0.0.1', iscsiPort: port },
        sources: [
          { kind: 'disk', name: 'ntfs', path: join(dir, 'ntfs.img'), raw: true },
          { kind: 'disk', name: 'ntfsro', path: join(dir, 'ntfs-ro.img'), raw: true, readOnly: true },
          { kind: 'disk', name: 'ext', path: join(dir, 'ext4.img'), raw: true, readOnly: true },
          { kind: 'disk', name: 'tree', path: join(dir, 'ext4.img'), readOnly: true },
        ],
        stages: [{ kind: 'mount', name: 'extfs', from: 'ext' }],
        exports: [
          { kind: 'iscsi', name: 'ntfs', from: 'ntfs', chap: { user: 'ruser', secret: { env: 'RAW_CHAP' } } },
          { kind: 'iscsi', name: 'ntfs-ro', from: 'ntfsro', chap: { user: 'ruser', secret: { env: 'RAW_CHAP' } } },
          // A disk mounted by the kernel is a tree: refused with a hint.
          { kind: 'iscsi', name: 'wrong', from: 'tree', chap: { user: 'ruser', secret: { env: 'RAW_CHAP' } } },
        ],
      },
      { RAW_CHAP: CHAP },
    );
    await agent.start();
  });

  afterAll(async () => {
    await agent?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('exports the image itself: no FUSE file, no kernel mount', async () => {
    const s = await agent.status();
    expect(s.ready).toBe(true);
    const x = s.exports.find((e) => e.name === 'ntfs')!;
    expect(x.health, x.error).toBe('ok');
    expect(x.details!['file']).toBe(join(dir, 'ntfs.img'));
    expect(s.sources.find((c) => c.name === 'ntfs')!.details).toMatchObject({ raw: true, size: SIZE });
    expect(existsSync(join(dir, 'run', 'blocks', 'ntfs'))).toBe(false);
    const wrong = s.exports.find((e) => e.name === 'wrong')!;
    expect(wrong.health).toBe('failed');
    expect(wrong.error).toMatch(/"tree" is a tree; .*set "raw": true on the disk source/);
  });

  it('answers iscsi-ls, iscsi-inq and iscsi-readcapacity16', async () => {
    const ls = await sh('iscsi-ls', ['-s', `iscsi://ruser%${CHAP}@127.0.0.1:${port}`]);
    expect(ls.stdout).toContain(IQN);
    expect(ls.stdout).toContain(IQN_RO);
    const inq = await sh('iscsi-inq', [url(IQN)]);
    expect(inq.code, inq.stderr).toBe(0);
    expect(inq.stdout).toMatch(/DIRECT_ACCESS/);
    const cap = await sh('iscsi-readcapacity16', [url(IQN)]);
    expect(cap.stdout).toContain(`Total size:${SIZE}`);
  });

  it('qemu-img convert of the LUN equals the disk, NTFS boot sector included', async () => {
    const out = join(dir, 'copy.raw');
    const conv = await sh('qemu-img', ['convert', '-O', 'raw', url(IQN), out]);
    expect(conv.code, conv.stderr).toBe(0);
    expect((await sh('cmp', [out, join(dir, 'ntfs.img')])).code).toBe(0);
    expect(readAt(out, 2048 * 512 + 3, 8).toString('latin1')).toBe('NTFS    ');
  });

  it('writes through to the image (and flushes); the read-only disk refuses writes', async () => {
    const w = await sh('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 1M 64k', '-c', 'flush', url(IQN)]);
    expect(w.code, w.stderr).toBe(0);
    expect(readAt(join(dir, 'ntfs.img'), 1024 * 1024, 65536).every((b) => b === 0x6b)).toBe(true);
    const before = readFileSync(join(dir, 'ntfs-ro.img'));
    const ro = await sh('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 1M 64k', url(IQN_RO)]);
    expect(ro.stdout + ro.stderr).toMatch(/fail|denied|read-only|protected|error/i);
    expect(readFileSync(join(dir, 'ntfs-ro.img')).equals(before)).toBe(true);
  });

  it('a mount stage mounts a raw disk through a loop device on the image itself', async () => {
    const st = (await agent.status()).stages.find((c) => c.name === 'extfs')!;
    expect(st.health, st.error).toBe('ok');
    expect(st.details).toMatchObject({ file: join(dir, 'ext4.img'), fstype: 'ext4', partition: 'whole' });
    expect(readFileSync(join(st.details!['mountpoint'] as string, 'raw.txt'), 'utf8')).toBe('mounted from a raw disk\n');
  });

  it('stops on SIGTERM leaving no tgtd, loop device or mount', async () => {
    expect(await agent.stop()).toBe(0);
    expect(await leftovers(agent.runtimeDir, [join(dir, 'ntfs.img'), join(dir, 'ext4.img')])).toEqual([]);
  });
});
