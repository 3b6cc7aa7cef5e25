/**
 * The fixed sectors of the disk: the MBR, the FAT32 boot sector (BPB) and the FSInfo sector.
 * Field offsets follow Microsoft's FAT specification (fatgen103).
 */
import { BACKUP_BOOT_SECTOR, FSINFO_SECTOR, NUM_FATS, PARTITION_START_SECTOR, RESERVED_SECTORS, ROOT_CLUSTER, SECTOR, type Geometry } from './layout.js';

export const PARTITION_TYPE_FAT32_LBA = 0x0c;
export const MEDIA_FIXED = 0xf8;

/** CHS triple of an LBA for the 255-head, 63-sector geometry; beyond cylinder 1023 the maximum, as every tool writes. */
function chs(lba: number): [number, number, number] {
  const cyl = Math.floor(lba / (255 * 63));
  if (cyl > 1023) return [0xfe, 0xff, 0xff];
  const head = Math.floor(lba / 63) % 255;
  const sector = (lba % 63) + 1;
  return [head, ((cyl >> 2) & 0xc0) | sector, cyl & 0xff];
}

/** The MBR: one partition of type 0x0C (FAT32, LBA) from 1 MiB to the end of the disk. */
export function buildMbr(g: Geometry, diskId: number): Buffer {
  const b = Buffer.alloc(SECTOR);
  b.writeUInt32LE(diskId >>> 0, 440);
  const e = 446;
  b[e] = 0x00; // not bootable
  b.set(chs(PARTITION_START_SECTOR), e + 1);
  b[e + 4] = PARTITION_TYPE_FAT32_LBA;
  b.set(chs(PARTITION_START_SECTOR + g.partitionSectors - 1), e + 5);
  b.writeUInt32LE(PARTITION_START_SECTOR, e + 8);
  b.writeUInt32LE(g.partitionSectors, e + 12);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

/** Volume label field: 11 bytes, space padded; "NO NAME" when there is none. */
export function labelField(label: string | undefined): Buffer {
  const b = Buffer.alloc(11, 0x20);
  b.write(label ?? 'NO NAME', 0, 11, 'latin1');
  return b;
}

/** Boot code that prints nothing and waits: this volume is data only. `int 0x18` asks the BIOS for the next boot device. */
const BOOT_CODE = Buffer.from([0xcd, 0x18, 0xeb, 0xfe]);

export function buildBootSector(g: Geometry, volumeId: number, label: string | undefined): Buffer {
  const b = Buffer.alloc(SECTOR);
  b.set([0xeb, 0x58, 0x90], 0); // jump over the BPB
  b.write('BRIDGE  ', 3, 8, 'latin1'); // OEM name
  b.writeUInt16LE(SECTOR, 11);
  b[13] = g.sectorsPerCluster;
  b.writeUInt16LE(RESERVED_SECTORS, 14);
  b[16] = NUM_FATS;
  b.writeUInt16LE(0, 17); // root entries: 0 on FAT32
  b.writeUInt16LE(0, 19); // 16-bit total sectors: 0, the 32-bit field holds it
  b[21] = MEDIA_FIXED;
  b.writeUInt16LE(0, 22); // 16-bit FAT size: 0 marks FAT32
  b.writeUInt16LE(63, 24); // sectors per track
  b.writeUInt16LE(255, 26); // heads
  b.writeUInt32LE(PARTITION_START_SECTOR, 28); // hidden sectors before the partition
  b.writeUInt32LE(g.partitionSectors, 32);
  b.writeUInt32LE(g.fatSectors, 36);
  b.writeUInt16LE(0, 40); // FAT mirroring on
  b.writeUInt16LE(0, 42); // version 0.0
  b.writeUInt32LE(ROOT_CLUSTER, 44);
  b.writeUInt16LE(FSINFO_SECTOR, 48);
  b.writeUInt16LE(BACKUP_BOOT_SECTOR, 50);
  b[64] = 0x80; // drive number
  b[66] = 0x29; // extended boot signature: the next three fields are valid
  b.writeUInt32LE(volumeId >>> 0, 67);
  b.set(labelField(label), 71);
  b.write('FAT32   ', 82, 8, 'latin1');
  b.set(BOOT_CODE, 90);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

/** FSInfo: free cluster count and the first free cluster (a hint), 0xFFFFFFFF when unknown/none. */
export function buildFsInfo(freeCount: number, nextFree: number): Buffer {
  const b = Buffer.alloc(SECTOR);
  b.writeUInt32LE(0x41615252, 0);
  b.writeUInt32LE(0x61417272, 484);
  b.writeUInt32LE(freeCount >>> 0, 488);
  b.writeUInt32LE(nextFree >>> 0, 492);
  b.writeUInt32LE(0xaa550000, 508);
  return b;
}

/** The 32 reserved sectors: boot sector, FSInfo, and their backups at sectors 6 and 7. */
export function buildReservedArea(g: Geometry, volumeId: number, label: string | undefined, freeCount: number, nextFree: number): Buffer {
  const b = Buffer.alloc(RESERVED_SECTORS * SECTOR);
  const boot = buildBootSector(g, volumeId, label);
  const info = buildFsInfo(freeCount, nextFree);
  b.set(boot, 0);
  b.set(info, FSINFO_SECTOR * SECTOR);
  b.set(boot, BACKUP_BOOT_SECTOR * SECTOR);
  b.set(info, (BACKUP_BOOT_SECTOR + 1) * SECTOR);
  return b;
}
