/**
 * Building the pipeline's values: sources (directory, disk, memory, file, store) and stages (kernel
 * mount: block → tree; FAT32: tree → block). Each builder returns the value, details for status, and
 * how to close it. Errors name the source or stage.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import type { SourceConfig, StageConfig } from '../../../shared/src/config.js';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import type { BlockDevice } from '../block/device.js';
import { FileBlockDevice } from '../block/file.js';
import { MemoryBlockDevice } from '../block/memory.js';
import { BlockFile } from '../fuse/block-file.js';
import { kernelMount } from '../stages/mount.js';
import { directoryTree, type Tree } from '../tree/tree.js';
import { hostname } from 'node:os';
// The store and the FAT32 synthesis load only when a config uses them (start-up time in the appliance).
import type { ChunkStoreDevice, OpenStoreOptions } from '../store/index.js';
import { pidAlive } from '../exports/procs.js';

export type Value =
  | { kind: 'tree'; tree: Tree }
  /**
   * `direct`: a path the kernel and tgtd open themselves (a raw disk source: image or /dev node), so
   * no FUSE file is made. `flushes` counts flushes that reached the device through its FUSE file
   * (SYNCHRONIZE CACHE from iSCSI).
   */
  | { kind: 'block'; device: BlockDevice; direct?: string; store?: ChunkStoreDevice; file?: BlockFile; flushes?: number };

export interface Built {
  value: Value;
  details: Record<string, unknown>;
}

export interface BuildContext {
  runtimeTrees: string;
  log: Logger;
  /** A secret's value; undefined while it is pending. */
  passphrase?: string;
  /** S3 keys resolved from the store source's secret references. */
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

/** `serial:NAME` → the /dev node of the disk whose serial is NAME (virtio disks attached by the host). */
export async function resolveDiskPath(path: string, sysBlock = '/sys/block'): Promise<string> {
  if (!path.startsWith('serial:')) return path;
  const serial = path.slice('serial:'.length);
  const names = await fsp.readdir(sysBlock).catch(() => [] as string[]);
  for (const dev of names) {
    for (const f of [join(sysBlock, dev, 'serial'), join(sysBlock, dev, 'device', 'serial')]) {
      const s = await fsp.readFile(f, 'utf8').catch(() => undefined);
      if (s !== undefined && s.trim() === serial) return `/dev/${dev}`;
    }
  }
  throw new BridgeError('ENOENT', `no disk with serial "${serial}" is attached (looked in /sys/block/*/serial)`);
}

export async function buildSource(s: SourceConfig, ctx: BuildContext): Promise<Built> {
  switch (s.kind) {
    case 'directory': {
      const tree = await directoryTree(s.path, s.readOnly);
      return { value: { kind: 'tree', tree }, details: { path: tree.path, readOnly: s.readOnly } };
    }
    case 'disk': {
      const path = await resolveDiskPath(s.path);
      if (s.raw) {
        // Opened here for its size and to fail early; tgtd and loop devices open the path themselves.
        const device = await FileBlockDevice.open(path, { readOnly: s.readOnly });
        return { value: { kind: 'block', device, direct: path }, details: { path: s.path, device: path, size: device.size, readOnly: s.readOnly, raw: true } };
      }
      // Read the partition table through our own reader; the kernel then reads the disk through a loop device.
      const reader = await FileBlockDevice.open(path, { readOnly: true });
      try {
        const tree = await kernelMount({
          what: `source "${s.name}"`,
          file: path,
          read: (t, o) => reader.read(t, o),
          size: reader.size,
          partition: s.partition,
          fstype: s.fstype,
          readOnly: s.readOnly,
          directIo: true,
          mountpoint: join(ctx.runtimeTrees, s.name),
          log: ctx.log,
        });
        return {
          value: { kind: 'tree', tree },
          details: {
            path: s.path,
            device: path,
            partition: tree.partition,
            fstype: tree.fstype,
            loop: tree.loopDevice,
            directIo: tree.directIo,
            mountpoint: tree.path,
            readOnly: s.readOnly,
          },
        };
      } finally {
        await reader.close();
      }
    }
    case 'memory': {
      const device = new MemoryBlockDevice(s.size);
      return { value: { kind: 'block', device }, details: { size: s.size } };
    }
    case 'file': {
      const device = await FileBlockDevice.open(s.path, { readOnly: s.readOnly, ...(s.size !== undefined ? { size: s.size } : {}) });
      return { value: { kind: 'block', device }, details: { path: s.path, size: device.size, readOnly: s.readOnly } };
    }
    case 'store': {
      const store = await openStoreBreakingOwnLock(
        {
          store: s.store,
          ...(s.endpoint ? { endpoint: s.endpoint } : {}),
          ...(s.region ? { region: s.region } : {}),
          ...(ctx.passphrase !== undefined ? { passphrase: ctx.passphrase } : {}),
          ...(ctx.credentials ? { credentials: ctx.credentials } : {}),
          ...(s.cache.dir ? { cacheDir: s.cache.dir } : {}),
          cacheSize: s.cache.size,
          memoryCacheSize: s.cache.memory,
          readOnly: s.readOnly,
          log: ctx.log,
        },
        ctx.log,
      );
      return { value: { kind: 'block', device: store, store }, details: { store: s.store, size: store.size, readOnly: s.readOnly, cacheSize: s.cache.size } };
    }
  }
}

/**
 * Opens a store; a writer lock left by a killed agent on this host (its pid is gone) is broken, since
 * the runtime directory is ours and no other agent runs. Locks of live or remote holders are kept.
 */
async function openStoreBreakingOwnLock(o: OpenStoreOptions, log: Logger): Promise<ChunkStoreDevice> {
  const { openStore } = await import('../store/index.js');
  try {
    return await openStore(o);
  } catch (e) {
    const holder = (e instanceof BridgeError && e.code === 'EBUSY' ? e.details['holder'] : undefined) as { host?: string; pid?: number } | undefined;
    if (!holder || holder.host !== hostname() || holder.pid === undefined || pidAlive(holder.pid)) throw e;
    log.warn('breaking the store lock of a process that is gone', { store: o.store, pid: holder.pid });
    return openStore({ ...o, breakLock: true });
  }
}

export async function buildStage(s: StageConfig, from: Value, fromName: string, ctx: BuildContext & { runtimeBlocks: string }): Promise<Built> {
  switch (s.kind) {
    case 'mount': {
      if (from.kind !== 'block') throw new BridgeError('CONFIG', `stage "${s.name}": mounts a block device, but "${fromName}" is a tree`);
      const file = await blockPath(from, fromName, ctx.runtimeBlocks, ctx.log);
      const readOnly = s.readOnly || !from.device.capabilities.writable;
      const tree = await kernelMount({
        what: `stage "${s.name}"`,
        file,
        read: (t, o) => from.device.read(t, o),
        size: from.device.size,
        partition: 'auto',
        fstype: s.fstype,
        readOnly,
        directIo: prefersDirectIo(from),
        mountpoint: join(ctx.runtimeTrees, s.name),
        log: ctx.log,
      });
      return {
        value: { kind: 'tree', tree },
        details: {
          from: fromName,
          file,
          partition: tree.partition,
          fstype: tree.fstype,
          loop: tree.loopDevice,
          directIo: tree.directIo,
          mountpoint: tree.path,
          readOnly,
        },
      };
    }
    case 'fat32': {
      if (from.kind !== 'tree') throw new BridgeError('CONFIG', `stage "${s.name}": synthesizes FAT32 from a tree, but "${fromName}" is a block device`);
      const { buildFat32Volume } = await import('../fat32/index.js');
      // Host writes go back into the source unless the stage or its tree is read-only (docs/fat32.md).
      const device = await buildFat32Volume(from.tree.path, {
        ...(s.size !== undefined ? { size: s.size } : {}),
        ...(s.label ? { label: s.label } : {}),
        writeBack: !s.readOnly && !from.tree.readOnly,
      });
      return { value: { kind: 'block', device }, details: { from: fromName, size: device.size, report: safeReport(device.report) } };
    }
  }
}

function safeReport(report: () => unknown): unknown {
  try {
    return report();
  } catch (e) {
    return { error: errorMessage(e) };
  }
}

/**
 * Whether readers of a block value's path (loop devices, tgtd) should use direct I/O. Yes, except
 * for a chunk store: its read-ahead follows the in-order requests of the kernel's buffered read-ahead,
 * and concurrent direct requests arrive out of order (cold ext4-over-store read here: 78 MB/s direct,
 * 93 MB/s buffered). Everything else is served from memory or from a page cache of its own (the
 * FAT32 volume's source files, a file device's file, a raw disk), so the FUSE file's page cache
 * would be a second copy (a FAT32 volume read cold: 0.8-1.4 GB/s direct, 0.3-0.5 GB/s buffered).
 */
export function prefersDirectIo(v: Extract<Value, { kind: 'block' }>): boolean {
  return !v.store;
}

/** The path that serves a block value to the kernel and tgtd: its own (raw disk), else its FUSE file. */
export async function blockPath(v: Extract<Value, { kind: 'block' }>, name: string, blocksDir: string, log: Logger): Promise<string> {
  return v.direct ?? (await ensureBlockFile(v, name, blocksDir, log)).path;
}

/** A block value's FUSE file (RUNTIME/blocks/NAME/disk.img), made on first use and shared. */
export async function ensureBlockFile(v: Extract<Value, { kind: 'block' }>, name: string, blocksDir: string, log: Logger): Promise<BlockFile> {
  if (!v.file) {
    v.file = await BlockFile.expose(v.device, join(blocksDir, name), { readOnly: !v.device.capabilities.writable, fsname: `bridge-${name}`, log });
    v.flushes = 0;
    v.file.onFlush(() => (v.flushes = (v.flushes ?? 0) + 1));
  }
  return v.file;
}

/** Closes a value: unmounts a tree; unmounts a block's FUSE file, then closes the device. */
export async function closeValue(v: Value): Promise<void> {
  if (v.kind === 'tree') return v.tree.close();
  if (v.file) return v.file.close(); // closes the device too
  return v.device.close();
}
