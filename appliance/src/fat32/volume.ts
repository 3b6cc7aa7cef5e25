/**
 * Fat32Volume: the tree→block stage. A read-only BlockDevice whose bytes are an MBR disk with one
 * FAT32 partition synthesized from a metadata snapshot of a directory tree. Metadata sectors are
 * generated when read (FATs from cluster runs, directories from the entry table, with a small
 * cache); file clusters are read from the source files only when asked for.
 *
 * Disk layout (regions.ts), in order: MBR | zeros to 1 MiB | 32 reserved sectors (boot, FSInfo,
 * backups at 6 and 7) | FAT 1 | FAT 2 | cluster 2 = root directory, other directories, files | free
 * clusters (zeros) | any tail smaller than a cluster (zeros).
 */
import { BridgeError } from '../../../shared/src/errors.js';
import { logger, type Logger } from '../../../shared/src/logger.js';
import { formatSize } from '../../../shared/src/size.js';
import { checkIo, Lifecycle, pushExtent, type BlockCapabilities, type BlockDevice, type Extent } from '../block/device.js';
import { buildMbr, buildReservedArea, labelField } from './boot.js';
import { allocateClusters, treeClusters, type ClusterMap } from './clusters.js';
import { ATTR_DIRECTORY, ATTR_VOLUME_ID, DIRENT_SIZE, writeLfnEntries, writeShortEntry } from './dirent.js';
import { chooseGeometry, clusterOffset, MAX_DISK_SIZE, MIB, NUM_FATS, RESERVED_SECTORS, SECTOR, type Geometry } from './layout.js';
import { Regions, RegionKind } from './regions.js';
import { SourceFiles, type SourceIoMode } from './source-files.js';
import { FLAG_LFN } from './entries.js';
import { lfnSlots } from './names.js';
import { entryPath, sourcePath, type LeftOut, type Renamed, type TreeSnapshot } from './tree.js';
import { DEFAULT_JOURNAL_NAME, Journal } from './journal.js';
import type { ResumedSession } from './session.js';
import { WriteBack, type WriteBackReport } from './writeback.js';
import { join } from 'node:path';

export interface Fat32Options {
  /** Size of the whole disk in bytes (rounded down to a sector); default: see defaultDiskSize. */
  size?: number;
  /** Volume label: up to 11 characters A-Z 0-9 space and $%'-_@~`!(){}^#&; lower case is upper-cased. Default BRIDGE. */
  label?: string;
  /** Force a cluster size (512 .. 32768); default: chosen from the size. */
  clusterSize?: number;
  /** Volume serial number; default derived from the snapshot time, as mkfs.fat does. */
  volumeId?: number;
  /** Source files kept open at once (default 64). */
  maxOpenFiles?: number;
  /**
   * How file data is read from the source: 'async' (default) or 'sync' (fastest from the page cache).
   * 'sync' blocks the event loop for each read, so it deadlocks when the source tree is served by this
   * same process (store → FUSE file → kernel mount → FAT32): only callers that know the source is
   * served by someone else (the `fat32 serve` CLI on a plain directory) may choose it.
   */
  ioMode?: SourceIoMode;
  /**
   * Accept host writes and apply them to the source tree at each flush (docs/fat32.md, "Write path").
   * Default false: the volume is read-only and writes throw EROFS.
   */
  writeBack?: boolean;
  /** Write-back journal directory, on the source's file system (default SOURCE/.bridge-fat32). */
  journalDir?: string;
  /** A write-back session to resume (set by buildFat32Volume from the journal; see session.ts). */
  resume?: ResumedSession;
  log?: Logger;
}

export interface Fat32Report {
  source: string;
  snapshotAt: string;
  diskSize: number;
  partitionOffset: number;
  clusterSize: number;
  clusters: number;
  freeClusters: number;
  label: string;
  volumeId: string;
  files: number;
  directories: number;
  bytes: number;
  /** Source entries not on the volume, each with its reason. */
  leftOut: LeftOut[];
  /** Entries whose volume name differs from their source name. */
  renamed: Renamed[];
  /** Files that changed in the source after the snapshot: their data reads fail with EIO. */
  changed: { path: string; detail: string }[];
  /** Write-back state; undefined on a read-only volume. */
  writeBack?: WriteBackReport;
}

/** Headroom of the default size: 10% of what the tree uses, at least 256 MiB. */
export function defaultHeadroom(usedBytes: number): number {
  return Math.max(Math.ceil(usedBytes / 10), 256 * MIB);
}

/**
 * Default disk size: what the tree needs (in clusters) plus the headroom, plus MBR gap, reserved
 * sectors and FATs, rounded up to a MiB and capped at the MBR limit.
 */
export function defaultDiskSize(snap: TreeSnapshot): number {
  let clusterSize = 4096;
  let size = 0;
  for (let round = 0; round < 4; round++) {
    const used = treeClusters(snap.entries, clusterSize) * clusterSize;
    const data = used + defaultHeadroom(used);
    const fats = NUM_FATS * Math.ceil(((data / clusterSize + 2) * 4) / SECTOR) * SECTOR;
    size = Math.ceil((MIB + RESERVED_SECTORS * SECTOR + fats + data + clusterSize) / MIB) * MIB;
    size = Math.min(size, MAX_DISK_SIZE);
    const g = chooseGeometry(size);
    if (g.clusterSize === clusterSize) break;
    clusterSize = g.clusterSize;
  }
  return size;
}

export function normalizeLabel(label: string): string {
  const up = label.toUpperCase();
  if (up.length === 0 || up.length > 11 || !/^[A-Z0-9 $%'\-_@~`!(){}^#&]+$/.test(up) || up.startsWith(' ')) {
    throw new BridgeError('EINVAL', `FAT32 volume label "${label}": use 1 to 11 characters A-Z, 0-9, space or $%'-_@~\`!(){}^#& (not starting with a space)`);
  }
  return up.trimEnd();
}

/** File reads at least this large run on libuv's pool even with sync source I/O. */
const POOL_READ_MIN = 128 * 1024;

/** Bytes of directory data kept generated (whole directories, least recently used dropped). */
const DIR_CACHE_BYTES = 8 * MIB;

export class Fat32Volume implements BlockDevice {
  readonly size: number;
  readonly blockSize = 4096;
  readonly capabilities: BlockCapabilities;
  readonly geometry: Geometry;
  readonly label: string;
  readonly volumeId: number;
  readonly clusters: ClusterMap;
  readonly regions: Regions;
  private readonly fixed: Buffer[];
  private readonly files: SourceFiles;
  private readonly dirCache = new Map<number, Buffer>();
  private readonly dirPaths = new Map<number, string>();
  private dirCacheBytes = 0;
  private readonly life = new Lifecycle();
  private readonly log: Logger;
  private readonly syncIo: boolean;
  private readonly writeback: WriteBack | undefined;

  constructor(
    readonly snapshot: TreeSnapshot,
    options: Fat32Options = {},
  ) {
    this.log = (options.log ?? logger()).child({ component: 'fat32' });
    this.label = normalizeLabel(options.label ?? 'BRIDGE');
    const requested = options.size ?? defaultDiskSize(snapshot);
    const diskSize = Math.floor(requested / SECTOR) * SECTOR;
    this.geometry = chooseGeometry(diskSize, options.clusterSize);
    const g = this.geometry;
    const needed = treeClusters(snapshot.entries, g.clusterSize);
    if (needed > g.clusterCount) {
      throw new BridgeError(
        'EINVAL',
        `the tree at ${snapshot.source} needs ${formatSize(needed * g.clusterSize)} in ${g.clusterSize}-byte clusters, ` +
          `more than the ${formatSize(g.clusterCount * g.clusterSize)} a ${formatSize(diskSize)} FAT32 disk holds; give a larger size`,
        { needed: needed * g.clusterSize, available: g.clusterCount * g.clusterSize },
      );
    }
    this.size = diskSize;
    this.volumeId = options.volumeId ?? (Math.floor(snapshot.takenAt.getTime() / 1000) ^ 0x5a5a0000) >>> 0;
    this.clusters = allocateClusters(snapshot.entries, g);
    const free = g.clusterCount - this.clusters.usedClusters;
    this.fixed = [buildMbr(g, this.volumeId), buildReservedArea(g, this.volumeId, this.label, free, this.clusters.firstFree(g.clusterCount))];
    this.regions = this.buildRegions();
    this.files = new SourceFiles(
      (i) => {
        const current = this.writeback?.identity(i);
        if (current) return current;
        const t = snapshot.entries;
        return { path: this.pathOf(i), size: t.size[i]!, mtimeMs: t.mtimeMs[i]!, ino: t.ino[i]! };
      },
      this.log,
      options.ioMode ?? 'async',
      options.maxOpenFiles ?? 64,
    );
    this.syncIo = (options.ioMode ?? 'async') === 'sync';
    this.capabilities = { writable: options.writeBack === true, trim: false, persistent: false, resizable: false };
    if (options.writeBack) {
      const journal = new Journal(options.journalDir ?? join(snapshot.source, DEFAULT_JOURNAL_NAME), snapshot.source, this.log);
      this.writeback = new WriteBack(
        {
          geometry: g,
          snapshot,
          clusters: this.clusters,
          volume: { size: this.size, clusterSize: g.clusterSize, volumeId: this.volumeId, label: this.label },
          mbr: this.fixed[0]!,
          reserved: this.fixed[1]!,
          readBase: (t, o) => this.readBase(t, o),
          forget: (e) => this.files.forget(e),
        },
        journal,
        this.log,
        options.resume,
      );
    }
    this.log.info('FAT32 volume built', {
      source: snapshot.source,
      size: this.size,
      clusterSize: g.clusterSize,
      files: snapshot.files,
      directories: snapshot.directories,
      leftOut: snapshot.leftOut.length,
    });
  }

  /** Absolute source path of an entry; directory paths are cached (10,000 directories ≈ 1 MB). */
  private pathOf(index: number): string {
    const t = this.snapshot.entries;
    if (index === 0) return this.snapshot.source;
    const parent = t.parent[index]!;
    let dir = this.dirPaths.get(parent);
    if (dir === undefined) {
      dir = parent === 0 ? this.snapshot.source : sourcePath(this.snapshot.source, t, parent);
      this.dirPaths.set(parent, dir);
    }
    return dir.endsWith('/') ? dir + t.sourceName[index]! : `${dir}/${t.sourceName[index]!}`;
  }

  private buildRegions(): Regions {
    const g = this.geometry;
    const cm = this.clusters;
    const fatBytes = g.fatSectors * SECTOR;
    // Fixed regions, then per run a gap (when free clusters precede it) and the run, then the tail.
    const max = 3 + NUM_FATS + 2 * cm.runs + 1;
    const start = new Float64Array(max + 1);
    const kind = new Uint8Array(max);
    const owner = new Int32Array(max);
    const base = new Float64Array(max);
    let n = 0;
    const push = (s: number, k: RegionKind, o: number, b: number): void => {
      start[n] = s;
      kind[n] = k;
      owner[n] = o;
      base[n] = b;
      n++;
    };
    push(0, RegionKind.Bytes, 0, 0); // MBR
    push(SECTOR, RegionKind.Zero, 0, 0); // gap to the partition
    push(g.partitionOffset, RegionKind.Bytes, 1, 0); // reserved sectors
    for (let f = 0; f < NUM_FATS; f++) push(g.fatOffset + f * fatBytes, RegionKind.Fat, f, 0);
    let pos = g.dataOffset;
    const entries = this.snapshot.entries;
    for (let i = 0; i < cm.runs; i++) {
      const s = clusterOffset(g, cm.start[i]!);
      if (s > pos) push(pos, RegionKind.Zero, 0, 0);
      const o = cm.owner[i]!;
      push(s, entries.isDir(o) ? RegionKind.Dir : RegionKind.File, o, cm.base[i]!);
      pos = s + cm.length[i]! * g.clusterSize;
    }
    if (pos < this.size) push(pos, RegionKind.Zero, 0, 0);
    start[n] = this.size;
    return Regions.fromColumns(start.slice(0, n + 1), kind.slice(0, n), owner.slice(0, n), base.slice(0, n), this.size);
  }

  async read(target: Uint8Array, offset: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, target.length, false)) return;
    // While a flush changes the source, reads wait: the source is never read half-changed.
    while (this.writeback?.busy) await this.writeback.busy.catch(() => undefined);
    await this.readView(target, offset);
  }

  /** The host's view: synthesized bytes with what it wrote on top (the write-back's layers). */
  private async readView(target: Uint8Array, offset: number): Promise<void> {
    await this.readBase(target, offset);
    if (this.writeback) await this.writeback.patch(Buffer.from(target.buffer, target.byteOffset, target.length), offset);
  }

  /** Loads or clears the write-back's on-disk state (buildFat32Volume calls it before serving). */
  async open(): Promise<void> {
    await this.writeback?.open();
  }

  /** The synthesized bytes. */
  private async readBase(target: Uint8Array, offset: number): Promise<void> {
    const r = this.regions;
    const end = offset + target.length;
    const pending: Promise<void>[] = [];
    for (let i = r.find(offset), pos = offset; pos < end; i++) {
      const rStart = r.start[i]!;
      const n = Math.min(end, r.end(i)) - pos;
      const part = target.subarray(pos - offset, pos - offset + n);
      const within = r.base[i]! + (pos - rStart);
      switch (r.kind[i] as RegionKind) {
        case RegionKind.Zero:
          part.fill(0);
          break;
        case RegionKind.Bytes:
          copyPadded(this.fixed[r.owner[i]!]!, within, part);
          break;
        case RegionKind.Fat:
          this.clusters.fillFat(part, within);
          break;
        case RegionKind.Dir:
          copyPadded(this.directoryBytes(r.owner[i]!), within, part);
          break;
        case RegionKind.File: {
          const entry = r.owner[i]!;
          // After write-back the snapshot file may have moved, shrunk or gone (its clusters read as zeros).
          const current = this.writeback?.identity(entry);
          if (current === null) {
            part.fill(0);
            break;
          }
          const size = current ? current.size : this.snapshot.entries.size[entry]!;
          // File bytes at `within`; past the file's end (the rest of its last cluster) zeros.
          const valid = Math.max(0, Math.min(n, size - within));
          if (valid < n) part.fill(0, valid);
          if (valid === 0) break;
          // Small reads are cheapest as system calls on this thread; large copies go to the pool, so they
          // overlap with the socket or FUSE work of other requests.
          if (this.syncIo && valid < POOL_READ_MIN) this.files.readSync(entry, part.subarray(0, valid), within);
          else pending.push(this.files.read(entry, part.subarray(0, valid), within));
          break;
        }
      }
      pos += n;
    }
    if (pending.length) await Promise.all(pending);
  }

  /**
   * Allocation map for NBD block status: the gap before the partition, free clusters and the unused
   * tail of each FAT read as zeros (holes: nothing stands behind them); everything else is data.
   * A zero range the host wrote into counts as data.
   */
  async extents(offset: number, length: number): Promise<Extent[]> {
    this.life.check();
    const out: Extent[] = [];
    if (!checkIo(this, offset, length, false)) return out;
    const r = this.regions;
    const end = offset + length;
    const cm = this.clusters;
    // FAT entries past the last used cluster are all zero.
    const lastCluster = cm.runs ? cm.start[cm.runs - 1]! + cm.length[cm.runs - 1]! : 2;
    const fatUsed = Math.ceil((lastCluster * 4) / SECTOR) * SECTOR;
    const zeroAt = (from: number, to: number): void => {
      const written = this.writeback?.touches(from, to - from) ?? false;
      pushExtent(out, to - from, !written, !written);
    };
    for (let i = r.find(offset), pos = offset; pos < end; i++) {
      const to = Math.min(end, r.end(i));
      const kind = r.kind[i] as RegionKind;
      if (kind === RegionKind.Zero) zeroAt(pos, to);
      else if (kind === RegionKind.Fat) {
        const usedEnd = r.start[i]! + fatUsed;
        if (pos < usedEnd) pushExtent(out, Math.min(to, usedEnd) - pos, false, false);
        if (to > usedEnd) zeroAt(Math.max(pos, usedEnd), to);
      } else pushExtent(out, to - pos, false, false);
      pos = to;
    }
    return out;
  }

  /** The used bytes of a directory (slots × 32): label or `.`/`..`, then each child's long-name and short entries. */
  directoryBytes(index: number): Buffer {
    const cached = this.dirCache.get(index);
    if (cached) {
      this.dirCache.delete(index);
      this.dirCache.set(index, cached);
      return cached;
    }
    const t = this.snapshot.entries;
    const buf = Buffer.alloc(t.dirSlots[index]! * DIRENT_SIZE);
    const times = { mtimeMs: t.mtimeMs[index]!, atimeMs: t.atimeMs[index]!, birthtimeMs: t.birthtimeMs[index]! };
    if (index === 0) {
      writeShortEntry(buf, 0, { name: labelField(this.label), attr: ATTR_VOLUME_ID, firstCluster: 0, size: 0, ...times });
      buf.fill(0, 12, 20); // a label has no creation or access time
    } else {
      const own = t.firstCluster[index]!;
      writeShortEntry(buf, 0, { name: '.          ', attr: ATTR_DIRECTORY, firstCluster: own, size: 0, ...times });
      // `..` of a directory in the root points at cluster 0, as the specification asks.
      const parent = t.parent[index]!;
      const up = parent === 0 ? 0 : t.firstCluster[parent]!;
      writeShortEntry(buf, DIRENT_SIZE, { name: '..         ', attr: ATTR_DIRECTORY, firstCluster: up, size: 0, ...times });
    }
    const first = t.childStart[index]!;
    for (let c = first; c < first + t.childCount[index]!; c++) {
      const slot = t.slot[c]!;
      if (t.flags[c]! & FLAG_LFN) {
        const name = t.name(c);
        writeLfnEntries(buf, (slot - lfnSlots(name)) * DIRENT_SIZE, name, t.shortName[c]!);
      }
      writeShortEntry(buf, slot * DIRENT_SIZE, {
        name: t.shortName[c]!,
        attr: t.attr[c]!,
        firstCluster: t.firstCluster[c]!,
        size: t.size[c]!,
        mtimeMs: t.mtimeMs[c]!,
        atimeMs: t.atimeMs[c]!,
        birthtimeMs: t.birthtimeMs[c]!,
      });
    }
    this.dirCache.set(index, buf);
    this.dirCacheBytes += buf.length;
    for (const [k, v] of this.dirCache) {
      if (this.dirCacheBytes <= DIR_CACHE_BYTES || k === index) break;
      this.dirCache.delete(k);
      this.dirCacheBytes -= v.length;
    }
    return buf;
  }

  /**
   * Where an entry's 32-byte short directory entry lies on the disk (its long-name entries, if any,
   * precede it). The write path compares host-written directory sectors with these.
   */
  directoryEntryOffset(index: number): number {
    const t = this.snapshot.entries;
    const parent = t.parent[index]!;
    if (index === 0) throw new BridgeError('EINVAL', 'the root directory has no directory entry');
    const byte = t.slot[index]! * DIRENT_SIZE;
    const cluster = this.clusters.clusterAt(t.firstCluster[parent]!, byte, this.geometry.clusterSize);
    if (cluster === undefined) throw new Error(`slot ${t.slot[index]} lies past the clusters of directory ${entryPath(t, parent)}`);
    return clusterOffset(this.geometry, cluster) + (byte % this.geometry.clusterSize);
  }

  /** What is on the volume, what was left out or renamed and why, and what changed since the snapshot. */
  report(): Fat32Report {
    const g = this.geometry;
    const s = this.snapshot;
    return {
      source: s.source,
      snapshotAt: s.takenAt.toISOString(),
      diskSize: this.size,
      partitionOffset: g.partitionOffset,
      clusterSize: g.clusterSize,
      clusters: g.clusterCount,
      freeClusters: g.clusterCount - this.clusters.usedClusters,
      label: this.label,
      volumeId: this.volumeId.toString(16).padStart(8, '0'),
      files: s.files,
      directories: s.directories,
      bytes: s.bytes,
      leftOut: s.leftOut,
      renamed: s.renamed,
      changed: [...this.files.changed].map(([i, detail]) => ({ path: entryPath(s.entries, i), detail })),
      ...(this.writeback ? { writeBack: this.writeback.report() } : {}),
    };
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, data.length, true)) return;
    const wb = this.writeback!;
    while (wb.busy) await wb.busy.catch(() => undefined);
    await wb.write(data, offset, (buf, off) => this.readBase(buf, off));
  }

  /** Applies the host's writes to the source (write-back) and returns once they are durable there. */
  async flush(): Promise<void> {
    this.life.check();
    await this.writeback?.flush();
  }

  /** No storage to release: same as zero. */
  async trim(offset: number, length: number): Promise<void> {
    await this.zero(offset, length);
  }

  async zero(offset: number, length: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, length, true)) return;
    const chunk = Buffer.alloc(Math.min(length, 1024 * 1024));
    for (let done = 0; done < length; done += chunk.length) await this.write(chunk.subarray(0, Math.min(chunk.length, length - done)), offset + done);
  }

  async close(): Promise<void> {
    if (this.life.isClosed) return;
    // Apply what the host wrote before it went away (as a flush would).
    if (this.writeback) await this.writeback.close().catch((e: unknown) => this.log.error('write-back at close failed', { error: String(e) }));
    if (!this.life.close()) return;
    this.dirCache.clear();
    await this.files.close();
  }
}

/** Copies src[from ..] into target; bytes past the end of src read as zero. */
function copyPadded(src: Buffer, from: number, target: Uint8Array): void {
  const n = Math.max(0, Math.min(target.length, src.length - from));
  if (n > 0) target.set(src.subarray(from, from + n));
  if (n < target.length) target.fill(0, n);
}
