/**
 * block → tree: the kernel mounts the filesystem on a disk image, a block device or a FUSE block
 * file, through a loop device placed at the filesystem's partition. Closing unmounts and detaches.
 */
import { promises as fsp } from 'node:fs';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { run, tryRun } from '../exports/run.js';
import type { Tree } from '../tree/tree.js';
import { attachLoop, detachLoop, loopDirectIo } from './loop.js';
import { locateFilesystem, type ReadAt } from './partitions.js';

export interface KernelMountOptions {
  /** What to name in errors and status, e.g. 'source "disk1"'. */
  what: string;
  /** The image file, block device or FUSE block file the loop device reads. */
  file: string;
  /** Reads the same bytes as `file` (for the partition table), and its size. */
  read: ReadAt;
  size: number;
  partition: number | 'auto' | 'whole';
  fstype: string;
  readOnly: boolean;
  /** Attach the loop device with direct I/O (default; loop.ts: when `file`'s own page cache is only a second copy). */
  directIo?: boolean;
  mountpoint: string;
  log: Logger;
}

export interface KernelMountTree extends Tree {
  loopDevice: string;
  /** The loop device reads its backing file with direct I/O (loop.ts). */
  directIo: boolean;
  fstype: string;
  partition: number | 'whole';
}

export async function kernelMount(o: KernelMountOptions): Promise<KernelMountTree> {
  const loc = await locateFilesystem(o.read, o.size, o.partition, o.what);
  const fstype = o.fstype !== 'auto' ? o.fstype : loc.fstype;
  const loop = await attachLoop(o.file, { offset: loc.offset, size: loc.size, readOnly: o.readOnly, directIo: o.directIo ?? true });
  try {
    await fsp.mkdir(o.mountpoint, { recursive: true, mode: 0o755 });
    const args = fstype ? ['-t', fstype] : [];
    const opts = o.readOnly ? ['ro'] : [];
    // A read-only ext4 with a dirty journal cannot be mounted without replaying it: skip the replay.
    if (o.readOnly && fstype === 'ext4') opts.push('noload');
    if (opts.length) args.push('-o', opts.join(','));
    await run('mount', [...args, loop, o.mountpoint], { code: 'EINVAL' }).catch((e: unknown) => {
      throw new BridgeError(
        'EINVAL',
        `${o.what}: cannot mount ${fstype ?? 'the filesystem'} on partition ${loc.partition} of ${o.file}: ${errorMessage(e)}`,
        {},
        { cause: e },
      );
    });
  } catch (e) {
    await detachLoop(loop).catch(() => undefined);
    throw e;
  }
  const directIo = await loopDirectIo(loop);
  o.log.info('mounted', {
    what: o.what,
    file: o.file,
    partition: loc.partition,
    fstype: fstype ?? 'auto',
    loop,
    directIo,
    mountpoint: o.mountpoint,
    readOnly: o.readOnly,
  });
  let closing: Promise<void> | undefined;
  return {
    path: o.mountpoint,
    readOnly: o.readOnly,
    description: `${fstype ?? 'filesystem'} on ${loop} (partition ${loc.partition} of ${o.file})`,
    loopDevice: loop,
    directIo,
    fstype: fstype ?? 'auto',
    partition: loc.partition,
    close: () =>
      (closing ??= (async () => {
        await unmountKernel(o.mountpoint, o.log);
        await detachLoop(loop);
        await fsp.rmdir(o.mountpoint).catch(() => undefined);
      })()),
  };
}

/** Unmounts, retrying while a server still releases its files; lazily as the last resort. */
export async function unmountKernel(mountpoint: string, log: Logger): Promise<void> {
  for (let i = 0; i < 10; i++) {
    if (await tryRun('umount', [mountpoint])) return;
    await new Promise((r) => setTimeout(r, 300));
  }
  log.warn('mount still busy: unmounting lazily', { mountpoint });
  await run('umount', ['-l', mountpoint]);
}
