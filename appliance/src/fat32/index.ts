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
import { promises as fsp } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { BridgeError } from '../../../shared/src/errors.js';
import { logger } from '../../../shared/src/logger.js';
import { DEFAULT_JOURNAL_NAME, Journal } from './journal.js';
import { foldCase } from './names.js';
import { Session } from './session.js';
import { scanTree } from './tree.js';
import { Fat32Volume, type Fat32Options } from './volume.js';

export type { WriteBackReport } from './writeback.js';
export { Fat32Volume, defaultDiskSize, defaultHeadroom, type Fat32Options, type Fat32Report } from './volume.js';
export { MIN_DISK_SIZE, MAX_DISK_SIZE } from './layout.js';
export type { LeftOut, Renamed, TreeSnapshot } from './tree.js';
export type { EntryTable, EntryView } from './entries.js';

/** Scans `sourceDir` and builds the volume. Throws BridgeError EINVAL when the tree does not fit `size`. */
export async function buildFat32Volume(sourceDir: string, options: Fat32Options = {}): Promise<Fat32Volume> {
  let skipRootName: string | undefined;
  if (options.writeBack) {
    const source = resolve(sourceDir);
    const journalDir = resolve(options.journalDir ?? join(source, DEFAULT_JOURNAL_NAME));
    // Staged files are renamed into the tree: the journal must live on the source's file system.
    const [srcDev, jDev] = await Promise.all([fsp.stat(source), fsp.stat(dirname(journalDir))]).then((s) => s.map((st) => st.dev));
    if (srcDev !== jDev) throw new BridgeError('EINVAL', `write-back journal ${journalDir} must be on the file system of the source ${source}`);
    if (journalDir.startsWith(source + '/') && dirname(journalDir) !== source) {
      throw new BridgeError('EINVAL', `write-back journal ${journalDir} inside the source must be a direct child of ${source} (it is kept out of the volume)`);
    }
    const journal = new Journal(journalDir, source, (options.log ?? logger()).child({ component: 'fat32' }));
    // A plan a crash interrupted is completed before the tree is scanned; it supersedes any session.
    const session = new Session(journalDir, source);
    if ((await journal.recover()) !== undefined) await session.remove();
    if (journal.inSource) skipRootName = basename(journalDir);
    options = { ...options, journalDir };
    sourceDir = source;
    // Host writes a flush left unapplied: the host's view is restored exactly (session.ts).
    const resume = await session.load(foldCase);
    if (resume) {
      const v = resume.volume;
      const vol = new Fat32Volume(resume.snapshot, { ...options, size: v.size, clusterSize: v.clusterSize, volumeId: v.volumeId, label: v.label, resume });
      await vol.open();
      return vol;
    }
  }
  const snapshot = await scanTree(sourceDir, { skipRootName });
  const vol = new Fat32Volume(snapshot, options);
  await vol.open();
  return vol;
}
