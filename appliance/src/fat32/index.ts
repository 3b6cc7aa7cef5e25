/**
 * Public API of the FAT32 synthesis stage, for the agent daemon and the CLI.
 *
 *   const vol = await buildFat32Volume('/srv/tree', { size: 8 * 2 ** 30, label: 'DATA' });
 *   // vol is a read-only BlockDevice: serve it (BlockFile.expose, an iSCSI LUN), then vol.close()
 *   vol.report(); // { leftOut: [{ path, reason }], renamed, changed, files, bytes, ... }
 *
 * The metadata is a snapshot taken here; file data is read from the source on demand. A file whose
 * size, mtime or inode changes afterwards reads as EIO (see docs/fat32.md, "Source changes").
 */
import { scanTree } from './tree.js';
import { Fat32Volume, type Fat32Options } from './volume.js';

export { Fat32Volume, defaultDiskSize, defaultHeadroom, type Fat32Options, type Fat32Report } from './volume.js';
export { MIN_DISK_SIZE, MAX_DISK_SIZE } from './layout.js';
export type { LeftOut, Renamed, TreeSnapshot } from './tree.js';
export type { EntryTable, EntryView } from './entries.js';

/** Scans `sourceDir` and builds the volume. Throws BridgeError EINVAL when the tree does not fit `size`. */
export async function buildFat32Volume(sourceDir: string, options: Fat32Options = {}): Promise<Fat32Volume> {
  const snapshot = await scanTree(sourceDir);
  return new Fat32Volume(snapshot, options);
}
