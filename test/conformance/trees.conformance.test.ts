/** Runs the tree conformance suite over every Tree implementation. */
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileBlockDevice } from '../../appliance/src/block/file.js';
import { kernelMount } from '../../appliance/src/stages/mount.js';
import { directoryTree } from '../../appliance/src/tree/tree.js';
import { logger } from '../../shared/src/logger.js';
import { sh } from '../helpers/exec.js';
import { treeConformance } from './tree.js';

let dir = '';
const fresh = (): string => (dir = mkdtempSync(join(tmpdir(), 'bridge-tree-')));
const cleanup = async (): Promise<void> => rmSync(dir, { recursive: true, force: true });

treeConformance('directory', {
  open: async () => {
    fresh();
    mkdirSync(join(dir, 'root'));
    return directoryTree(join(dir, 'root'), false);
  },
  cleanup,
});

/** A filesystem image made by mkfs, optionally inside an MBR partition at 1 MiB. */
async function image(fstype: 'ext4' | 'xfs' | 'btrfs', partitioned: boolean): Promise<string> {
  const img = join(fresh(), 'disk.img');
  const size = fstype === 'xfs' ? 320 : 160;
  writeFileSync(img, '');
  await sh('truncate', ['-s', `${size + 2}M`, img]);
  if (!partitioned) {
    await sh(`mkfs.${fstype}`, [fstype === 'ext4' ? '-qF' : '-f', img]);
    return img;
  }
  await sh('sh', ['-c', `echo 'start=2048, type=83' | sfdisk -q ${img}`]);
  const part = join(dir, 'part.img');
  await sh('truncate', ['-s', `${size}M`, part]);
  await sh(`mkfs.${fstype}`, [fstype === 'ext4' ? '-qF' : '-f', part]);
  await sh('dd', [`if=${part}`, `of=${img}`, 'bs=1M', 'seek=1', 'conv=notrunc,sparse', 'status=none']);
  rmSync(part);
  return img;
}

function mounted(fstype: 'ext4' | 'xfs' | 'btrfs', partitioned: boolean, readOnly = false): Parameters<typeof treeConformance>[1] {
  return {
    open: async () => {
      const img = await image(fstype, partitioned);
      const dev = await FileBlockDevice.open(img, { readOnly: true });
      try {
        return await kernelMount({
          what: `test ${fstype}`,
          file: img,
          read: (t, o) => dev.read(t, o),
          size: dev.size,
          partition: 'auto',
          fstype: 'auto',
          readOnly,
          mountpoint: join(dir, 'mnt'),
          log: logger(),
        });
      } finally {
        await dev.close();
      }
    },
    cleanup,
    enforcesReadOnly: true,
  };
}

treeConformance('kernel mount: ext4, whole disk', mounted('ext4', false));
treeConformance('kernel mount: ext4 in an MBR partition', mounted('ext4', true));
treeConformance('kernel mount: ext4 read-only', mounted('ext4', true, true));
treeConformance('kernel mount: xfs in an MBR partition', mounted('xfs', true));
treeConformance('kernel mount: btrfs, whole disk', mounted('btrfs', false));
