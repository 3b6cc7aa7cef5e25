/**
 * The FAT32 volume passes the block-device conformance suite (read side: it is read-only until the
 * write-path issue). The 40 MiB variant puts directory and file clusters inside the suite's first
 * 2 MiB window, so unaligned reads straddle metadata, directory and file regions.
 */
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildFat32Volume } from '../../appliance/src/fat32/index.js';
import { Rng } from '../helpers/random.js';
import { blockDeviceConformance } from '../conformance/block-device.js';

let dir = '';

function makeTree(): string {
  dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-conf-'));
  const rng = new Rng(7);
  for (let d = 0; d < 5; d++) {
    mkdirSync(join(dir, `dir ${d}`));
    for (let f = 0; f < 40; f++) writeFileSync(join(dir, `dir ${d}`, `file number ${f}.bin`), rng.bytes(rng.int(0, 9000)));
  }
  writeFileSync(join(dir, 'big.bin'), rng.bytes(3 * 1024 * 1024 + 5));
  return dir;
}

const cleanup = async (): Promise<void> => rmSync(dir, { recursive: true, force: true });

blockDeviceConformance('fat32 volume (default size, 4 KiB clusters)', {
  open: () => buildFat32Volume(makeTree()),
  cleanup,
  boundaries: [512, 4096, 1024 * 1024],
});

blockDeviceConformance('fat32 volume (40 MiB, 512-byte clusters)', {
  open: () => buildFat32Volume(makeTree(), { size: 40 * 1024 * 1024 }),
  cleanup,
  boundaries: [512, 1024 * 1024],
});

blockDeviceConformance('fat32 volume (40 MiB, async source I/O, 4 open files at most)', {
  open: () => buildFat32Volume(makeTree(), { size: 40 * 1024 * 1024, ioMode: 'async', maxOpenFiles: 4 }),
  cleanup,
  boundaries: [512, 1024 * 1024],
});
