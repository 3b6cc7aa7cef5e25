/**
 * Geometry of the virtual disk: one MBR partition at 1 MiB holding a FAT32 file system.
 *
 * FAT32 rules kept here: at least 65,525 clusters (below that Microsoft's rule makes the volume
 * FAT16 whatever the BPB says), at most 0x0FFFFF4 clusters, 32 reserved sectors, 2 FATs, data area
 * aligned to the cluster size. The disk fits an MBR: at most 2^32 - 1 sectors.
 */
import { BridgeError } from '../../../shared/src/errors.js';
import { formatSize } from '../../../shared/src/size.js';

export const SECTOR = 512;
export const PARTITION_START_SECTOR = 2048; // 1 MiB
export const RESERVED_SECTORS = 32;
export const NUM_FATS = 2;
export const FSINFO_SECTOR = 1;
export const BACKUP_BOOT_SECTOR = 6;
export const ROOT_CLUSTER = 2;
export const MIN_CLUSTERS = 65_525;
export const MAX_CLUSTERS = 0x0ffffff4;
export const MIB = 1024 * 1024;
/** Largest disk an MBR can describe (2^32 sectors of 512 bytes, 2 TiB), whole MiB. */
export const MAX_DISK_SIZE = Math.floor((0xffffffff * SECTOR) / MIB) * MIB;

export interface Geometry {
  /** Whole virtual disk, bytes. */
  diskSize: number;
  /** Byte offset of the partition (1 MiB). */
  partitionOffset: number;
  partitionSectors: number;
  clusterSize: number;
  sectorsPerCluster: number;
  /** Sectors per FAT. */
  fatSectors: number;
  /** Data clusters (numbered 2 .. clusterCount + 1). */
  clusterCount: number;
  /** Disk byte offset of FAT number `i` is fatOffset + i * fatSectors * 512. */
  fatOffset: number;
  /** Disk byte offset of cluster 2. */
  dataOffset: number;
}

/** Geometry of a disk of `diskSize` bytes with the given cluster size, or undefined when it holds too few clusters. */
export function geometryWith(diskSize: number, clusterSize: number): Geometry | undefined {
  const partitionSectors = Math.floor(diskSize / SECTOR) - PARTITION_START_SECTOR;
  const spc = clusterSize / SECTOR;
  if (partitionSectors <= RESERVED_SECTORS) return undefined;
  // Upper bound of the FAT size (as if the FATs took no room), then grow it until the data area is
  // cluster-aligned; the FAT may be a little larger than needed, which every reader accepts.
  let fatSectors = Math.ceil(((Math.floor((partitionSectors - RESERVED_SECTORS) / spc) + 2) * 4) / SECTOR);
  while ((RESERVED_SECTORS + NUM_FATS * fatSectors) % spc !== 0) fatSectors++;
  const dataSectors = partitionSectors - RESERVED_SECTORS - NUM_FATS * fatSectors;
  const clusterCount = Math.floor(dataSectors / spc);
  if (clusterCount < MIN_CLUSTERS || clusterCount > MAX_CLUSTERS) return undefined;
  const partitionOffset = PARTITION_START_SECTOR * SECTOR;
  const fatOffset = partitionOffset + RESERVED_SECTORS * SECTOR;
  return {
    diskSize,
    partitionOffset,
    partitionSectors,
    clusterSize,
    sectorsPerCluster: spc,
    fatSectors,
    clusterCount,
    fatOffset,
    dataOffset: fatOffset + NUM_FATS * fatSectors * SECTOR,
  };
}

/** Microsoft's preferred cluster size for a volume size, before falling back to smaller ones. */
function preferredClusterSize(diskSize: number): number {
  if (diskSize <= 8 * 1024 * MIB) return 4096;
  if (diskSize <= 16 * 1024 * MIB) return 8192;
  if (diskSize <= 32 * 1024 * MIB) return 16384;
  return 32768;
}

/** Smallest disk that holds a FAT32 with 512-byte clusters (about 33 MiB). */
export const MIN_DISK_SIZE = (() => {
  let size = 32 * MIB;
  while (!geometryWith(size, SECTOR)) size += MIB;
  return size;
})();

/**
 * The geometry for a disk size: the preferred cluster size, halved while the volume would hold
 * fewer than 65,525 clusters. `clusterSize` forces one.
 */
export function chooseGeometry(diskSize: number, clusterSize?: number): Geometry {
  if (diskSize > MAX_DISK_SIZE)
    throw new BridgeError('EINVAL', `FAT32 volume size ${formatSize(diskSize)} exceeds the MBR limit of ${formatSize(MAX_DISK_SIZE)}`);
  if (clusterSize !== undefined) {
    if (![512, 1024, 2048, 4096, 8192, 16384, 32768].includes(clusterSize)) {
      throw new BridgeError('EINVAL', `FAT32 cluster size ${clusterSize} is not a power of two from 512 to 32768`);
    }
    const g = geometryWith(diskSize, clusterSize);
    if (!g)
      throw new BridgeError('EINVAL', `a ${formatSize(diskSize)} disk with ${clusterSize}-byte clusters has fewer than ${MIN_CLUSTERS} clusters (not FAT32)`);
    return g;
  }
  for (let cs = preferredClusterSize(diskSize); cs >= SECTOR; cs /= 2) {
    const g = geometryWith(diskSize, cs);
    if (g) return g;
  }
  throw new BridgeError(
    'EINVAL',
    `FAT32 volume size ${formatSize(diskSize)} is too small: the minimum is ${formatSize(MIN_DISK_SIZE)} (65,525 clusters of 512 bytes)`,
  );
}

/** Disk byte offset of a cluster's first byte. */
export function clusterOffset(g: Geometry, cluster: number): number {
  return g.dataOffset + (cluster - ROOT_CLUSTER) * g.clusterSize;
}
