/** Partition discovery against tables written by sfdisk (and compared with `sfdisk --json`). */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileBlockDevice } from '../../appliance/src/block/file.js';
import { locateFilesystem, readPartitionTable } from '../../appliance/src/stages/partitions.js';
import { AgentProcess, sh } from './agent-process.js';
import { gptDisk, mbrDisk, wholeExt4 } from './disk-images.js';

describe('partition discovery', () => {
  let dir = '';
  beforeAll(async () => {
    dir = AgentProcess.tempDir('bridge-parts-');
    await gptDisk(join(dir, 'gpt.img'));
    await mbrDisk(join(dir, 'mbr.img'));
    await wholeExt4(join(dir, 'whole.img'), 8, { 'a.txt': 'a' });
    await sh('truncate', ['-s', '8M', join(dir, 'fat.img')]);
    await sh('mkfs.fat', ['-F', '32', join(dir, 'fat.img')]);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const open = async (name: string): Promise<{ dev: FileBlockDevice; read: (t: Uint8Array, o: number) => Promise<void> }> => {
    const dev = await FileBlockDevice.open(join(dir, name), { readOnly: true });
    return { dev, read: (t, o) => dev.read(t, o) };
  };

  it('reads GPT and MBR (with logical partitions) as sfdisk does', async () => {
    for (const name of ['gpt.img', 'mbr.img']) {
      const { dev, read } = await open(name);
      const table = await readPartitionTable(read, dev.size);
      const theirs = JSON.parse((await sh('sfdisk', ['--json', join(dir, name)])).stdout) as {
        partitiontable: { partitions: { node: string; start: number; size: number }[] };
      };
      // sfdisk also lists the extended container (type 5); we list what holds filesystems.
      const expected = theirs.partitiontable.partitions
        .map((p) => ({ index: Number(/(\d+)$/.exec(p.node)![1]), offset: p.start * 512, size: p.size * 512 }))
        .filter((p) => !(name === 'mbr.img' && p.index === 2));
      expect(table.partitions.map(({ index, offset, size }) => ({ index, offset, size }))).toEqual(expected);
      expect(table.scheme).toBe(name === 'gpt.img' ? 'gpt' : 'mbr');
      await dev.close();
    }
  });

  it('finds the first partition with a filesystem, a named one, or the whole disk', async () => {
    const gpt = await open('gpt.img');
    expect(await locateFilesystem(gpt.read, gpt.dev.size, 'auto', 'disk')).toEqual({ offset: 18432 * 512, size: 110592 * 512, partition: 2, fstype: 'ext4' });
    await expect(locateFilesystem(gpt.read, gpt.dev.size, 7, 'source "x"')).rejects.toThrow(/source "x" has no partition 7 \(it has 1, 2\)/);
    await gpt.dev.close();
    const mbr = await open('mbr.img');
    expect((await locateFilesystem(mbr.read, mbr.dev.size, 'auto', 'disk')).partition).toBe(5);
    await mbr.dev.close();
    const whole = await open('whole.img');
    expect(await locateFilesystem(whole.read, whole.dev.size, 'auto', 'disk')).toMatchObject({ offset: 0, partition: 'whole', fstype: 'ext4' });
    await expect(locateFilesystem(whole.read, whole.dev.size, 1, 'disk')).rejects.toThrow(/no partition table/);
    await whole.dev.close();
    // A FAT boot sector ends in 55 AA too: it is a filesystem, not a partition table.
    const fat = await open('fat.img');
    expect(await locateFilesystem(fat.read, fat.dev.size, 'auto', 'disk')).toMatchObject({ partition: 'whole', fstype: 'vfat' });
    await fat.dev.close();
  });
});

describe('disk paths', () => {
  it('resolves serial:NAME through /sys/block/*/serial and names a missing serial', async () => {
    const { mkdirSync, writeFileSync, mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { resolveDiskPath } = await import('../../appliance/src/daemon/values.js');
    const sys = mkdtempSync(join(tmpdir(), 'bridge-sysblock-'));
    mkdirSync(join(sys, 'vda'));
    writeFileSync(join(sys, 'vda', 'serial'), 'bridge-root\n');
    mkdirSync(join(sys, 'vdb'));
    writeFileSync(join(sys, 'vdb', 'serial'), 'data-disk-1\n');
    mkdirSync(join(sys, 'sda', 'device'), { recursive: true });
    writeFileSync(join(sys, 'sda', 'device', 'serial'), 'scsi-7\n');
    expect(await resolveDiskPath('serial:data-disk-1', sys)).toBe('/dev/vdb');
    expect(await resolveDiskPath('serial:scsi-7', sys)).toBe('/dev/sda');
    expect(await resolveDiskPath('/var/tmp/disk.img', sys)).toBe('/var/tmp/disk.img');
    await expect(resolveDiskPath('serial:nope', sys)).rejects.toThrow(/no disk with serial "nope"/);
    rmSync(sys, { recursive: true, force: true });
  });
});
