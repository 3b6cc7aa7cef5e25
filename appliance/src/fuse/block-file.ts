/**
 * Presents a BlockDevice as one file, MOUNTPOINT/disk.img, in a FUSE mount — the form in which Samba,
 * tgtd and loop devices consume block devices. Reads and writes at any offset map 1:1 to the device;
 * fsync reaches the device's flush. allow_other so that other processes (tgtd, smbd) can open it.
 *
 * FUSE callbacks arrive on the event loop from fuse-native's threads; every handler is async and
 * never touches the mount itself, so the loop that answers the kernel is never blocked by it.
 */
import Fuse, { type Ops, type Stat } from 'fuse-native';
import { promises as fsp } from 'node:fs';
import { resolve } from 'node:path';
import { errnoOf, errorMessage, BridgeError } from '../../../shared/src/errors.js';
import { logger, type Logger } from '../../../shared/src/logger.js';
import type { BlockDevice } from '../block/device.js';
import { findMount, lazyUnmount, prepareMountpoint, untilAnswering } from './mounts.js';

export interface BlockFileOptions {
  /** Name of the file inside the mount (default disk.img). */
  fileName?: string;
  /** Present the file read-only even when the device is writable. */
  readOnly?: boolean;
  /** Shown as the mount's source in /proc/mounts. */
  fsname?: string;
  /** close() of a descriptor opened for writing flushes the device (for writers that never fsync, e.g. mtools). */
  flushOnClose?: boolean;
  /** Extra kernel queue options (e.g. DEEP_QUEUE) and a read-ahead for the mount (KiB); default: libfuse's and the kernel's. */
  queueOptions?: string;
  readAheadKb?: number;
  log?: Logger;
}

/**
 * A deeper kernel queue than libfuse2's default (12 background requests, congested at 9) and more
 * read-ahead than the kernel's 128 KiB. Not the default: measured on the 2-core machine under load,
 * neither setting gave a consistent gain, and both together made nbdcopy on the FAT32 file slower
 * (docs/fat32.md, "FUSE path"). `npm run bench -- fuse` compares them with the defaults.
 */
export const DEEP_QUEUE = 'max_background=64,congestion_threshold=48';
export const LIBFUSE_DEFAULT_QUEUE = 'max_background=12,congestion_threshold=9';
export const DEEP_READ_AHEAD_KB = 1024;

const O_ACCMODE = 3;
const O_RDONLY = 0;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

/** Called by the FUSE layer after every flush so callers (stats, tests) can observe them. */
export type FlushListener = () => void;

export class BlockFile {
  readonly path: string;
  private fuse: Fuse | undefined;
  private closing: Promise<void> | undefined;
  private readonly log: Logger;
  private readonly started = new Date();
  private nextFd = 1;
  private flushListeners: FlushListener[] = [];
  /** Descriptors opened for writing: their close() flushes the device (tools like mtools never fsync). */
  private readonly writers = new Set<number>();

  private constructor(
    readonly device: BlockDevice,
    readonly mountpoint: string,
    private readonly options: BlockFileOptions,
  ) {
    this.path = resolve(mountpoint, options.fileName ?? 'disk.img');
    this.log = (options.log ?? logger()).child({ component: 'fuse', mountpoint });
  }

  /** Mounts MOUNTPOINT and serves the device in it until close(). */
  static async expose(device: BlockDevice, mountpoint: string, options: BlockFileOptions = {}): Promise<BlockFile> {
    const bf = new BlockFile(device, resolve(mountpoint), options);
    await bf.mount();
    return bf;
  }

  onFlush(listener: FlushListener): void {
    this.flushListeners.push(listener);
  }

  private get writable(): boolean {
    return this.device.capabilities.writable && !this.options.readOnly;
  }

  private async mount(): Promise<void> {
    await prepareMountpoint(this.mountpoint, this.log);
    const fuse = new Fuse(this.mountpoint, this.ops(), {
      allowOther: true,
      // Extra options ride in fsname: 128 KiB requests (libfuse2's maximum) instead of 4 KiB pages.
      fsname: `${this.options.fsname ?? 'bridge'},big_writes,max_write=131072${this.options.queueOptions ? `,${this.options.queueOptions}` : ''}`,
      maxRead: 131072,
      // Only this file changes the device, so the kernel may keep its page cache across opens.
      kernelCache: true,
      attrTimeout: 3600,
      entryTimeout: 3600,
      // Flushes of a remote store can legitimately take long; our layers bound their own waits.
      timeout: false,
    });
    await new Promise<void>((res, rej) =>
      fuse.mount((err) => (err ? rej(new BridgeError('EIO', `cannot mount FUSE at ${this.mountpoint}: ${err.message}`)) : res())),
    );
    this.fuse = fuse;
    if (this.options.readAheadKb) await this.setReadAhead(this.options.readAheadKb);
    this.log.info('serving block device', { file: this.path, size: this.device.size, writable: this.writable });
  }

  /**
   * The kernel reads ahead at most 128 KiB on a FUSE mount, and FUSE's init cannot ask for more; the
   * mount's bdi can be told after mounting (root only; a failure keeps the kernel's value).
   */
  private async setReadAhead(kb: number): Promise<void> {
    // FUSE's INIT reply resets the value: wait until requests are answered (asynchronously: this
    // thread answers them).
    await untilAnswering(this.mountpoint);
    const mount = await findMount(this.mountpoint).catch(() => undefined);
    if (!mount?.device) return;
    await fsp
      .writeFile(`/sys/class/bdi/${mount.device}/read_ahead_kb`, `${kb}\n`)
      .catch((e: unknown) => this.log.debug('cannot set the FUSE read-ahead', { error: errorMessage(e) }));
  }

  private ops(): Ops {
    const name = '/' + (this.options.fileName ?? 'disk.img');
    const stat = (isDir: boolean): Stat => ({
      mtime: this.started,
      atime: this.started,
      ctime: this.started,
      size: isDir ? 4096 : this.device.size,
      mode: isDir ? S_IFDIR | 0o755 : S_IFREG | (this.writable ? 0o660 : 0o440),
      uid: process.getuid?.() ?? 0,
      gid: process.getgid?.() ?? 0,
      nlink: isDir ? 2 : 1,
      blksize: 131072,
      blocks: isDir ? 8 : Math.ceil(this.device.size / 512),
    });
    const fail = (op: string, e: unknown): number => {
      this.log.error(`${op} failed`, { error: errorMessage(e) });
      return -errnoOf(e);
    };
    return {
      readdir: (path, cb) => (path === '/' ? cb(0, [name.slice(1)], [stat(false)]) : cb(Fuse.ENOENT)),
      getattr: (path, cb) => (path === '/' ? cb(0, stat(true)) : path === name ? cb(0, stat(false)) : cb(Fuse.ENOENT)),
      fgetattr: (path, _fd, cb) => (path === name ? cb(0, stat(false)) : cb(0, stat(true))),
      open: (path, flags, cb) => {
        if (path !== name) return cb(Fuse.ENOENT);
        if ((flags & O_ACCMODE) !== O_RDONLY && !this.writable) return cb(Fuse.EROFS);
        const fd = this.nextFd++;
        if ((flags & O_ACCMODE) !== O_RDONLY) this.writers.add(fd);
        cb(0, fd);
      },
      release: (_path, fd, cb) => {
        this.writers.delete(fd);
        cb(0);
      },
      read: (_path, _fd, buf, len, pos, cb) => {
        const n = Math.max(0, Math.min(len, this.device.size - pos));
        if (n === 0) return cb(0);
        this.device.read(buf.subarray(0, n), pos).then(
          () => cb(n),
          (e: unknown) => cb(fail('read', e)),
        );
      },
      write: (_path, _fd, buf, len, pos, cb) => {
        if (!this.writable) return cb(Fuse.EROFS);
        // Writes past the end cannot grow a block device: the kernel gets ENOSPC-like EFBIG via ERANGE.
        if (pos + len > this.device.size) return cb(-27 /* EFBIG */);
        this.device.write(buf.subarray(0, len), pos).then(
          () => cb(len),
          (e: unknown) => cb(fail('write', e)),
        );
      },
      fsync: (_path, _datasync, _fd, cb) => {
        this.device.flush().then(
          () => {
            this.flushListeners.forEach((l) => l());
            cb(0);
          },
          (e: unknown) => cb(fail('flush', e)),
        );
      },
      // With flushOnClose, close() of a descriptor opened for writing flushes the device, so a writer
      // that never calls fsync (mtools) has its writes durable (for FAT32: applied) when close returns.
      flush: (_path, fd, cb) => {
        if (!this.options.flushOnClose || !this.writers.has(fd)) return cb(0);
        this.device.flush().then(
          () => {
            this.flushListeners.forEach((l) => l());
            cb(0);
          },
          (e: unknown) => cb(fail('flush', e)),
        );
      },
      // A block device has a fixed size: truncating to it (as `dd conv=notrunc` does not, but some
      // tools do with O_TRUNC) is accepted, other sizes are refused.
      truncate: (_path, size, cb) => cb(size === this.device.size ? 0 : Fuse.EINVAL),
      ftruncate: (_path, _fd, size, cb) => cb(size === this.device.size ? 0 : Fuse.EINVAL),
      utimens: (_path, _a, _m, cb) => cb(0),
      chmod: (_path, _mode, cb) => cb(0),
      statfs: (_path, cb) =>
        cb(0, {
          bsize: 4096,
          frsize: 4096,
          blocks: Math.ceil(this.device.size / 4096),
          bfree: 0,
          bavail: 0,
          files: 1,
          ffree: 0,
          favail: 0,
          fsid: 0,
          flag: 0,
          namemax: 255,
        }),
    };
  }

  /** Unmounts (lazily, so a busy mount cannot block us), then flushes and closes the device. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    const fuse = this.fuse;
    this.fuse = undefined;
    if (fuse) {
      await new Promise<void>((res) =>
        fuse.unmount((err) => {
          if (err) this.log.warn('unmount reported an error; clearing lazily', { error: err.message });
          res();
        }),
      );
      // fuse-native's unmount can leave the entry behind if fusermount failed: make sure it is gone.
      await lazyUnmount(this.mountpoint).catch(() => undefined);
    }
    try {
      await this.device.flush();
    } finally {
      await this.device.close();
    }
    this.log.info('unmounted and closed', { file: this.path });
  }
}
