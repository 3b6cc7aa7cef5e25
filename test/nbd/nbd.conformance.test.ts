/**
 * The block-device conformance suite through NBD: the device behind our NBD server, seen through an
 * NBD client (client.ts), must behave like the device itself — with simple and structured replies,
 * for a memory device, a file device (persistence across connections) and a FAT32 volume.
 */
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlockDevice } from '../../appliance/src/block/device.js';
import { FileBlockDevice } from '../../appliance/src/block/file.js';
import { MemoryBlockDevice } from '../../appliance/src/block/memory.js';
import { buildFat32Volume } from '../../appliance/src/fat32/index.js';
import { NbdServer } from '../../appliance/src/nbd/server.js';
import { blockDeviceConformance } from '../conformance/block-device.js';
import { Rng } from '../helpers/random.js';
import { NbdClientDevice } from './client.js';

let dir = '';
let server: NbdServer | undefined;
let device: BlockDevice | undefined;

async function serve(dev: BlockDevice, structured: boolean): Promise<NbdClientDevice> {
  dir ||= mkdtempSync(join(tmpdir(), 'bridge-nbd-conf-'));
  device = dev;
  server = await NbdServer.listen(dev, { address: join(dir, 'nbd.sock') });
  return NbdClientDevice.connect(join(dir, 'nbd.sock'), { structured });
}

async function cleanup(): Promise<void> {
  await server?.close();
  await device?.close();
  server = undefined;
  device = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = '';
}

blockDeviceConformance('NBD: memory device, simple replies', {
  open: () => serve(new MemoryBlockDevice(16 * 1024 * 1024 + 4321), false),
  cleanup,
  boundaries: [1024 * 1024],
});

blockDeviceConformance('NBD: memory device, structured replies', {
  open: () => serve(new MemoryBlockDevice(16 * 1024 * 1024), true),
  cleanup,
  boundaries: [1024 * 1024],
});

blockDeviceConformance('NBD: file device, reopened over a new connection', {
  open: async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-nbd-conf-'));
    return serve(await FileBlockDevice.open(join(dir, 'disk.img'), { size: 24 * 1024 * 1024 }), true);
  },
  reopen: () => NbdClientDevice.connect(join(dir, 'nbd.sock'), { structured: true }),
  cleanup,
});

blockDeviceConformance('NBD: FAT32 volume (read-only)', {
  open: async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-nbd-conf-'));
    const src = join(dir, 'tree');
    const rng = new Rng(11);
    for (let d = 0; d < 3; d++) {
      mkdirSync(join(src, `dir ${d}`), { recursive: true });
      for (let f = 0; f < 30; f++) writeFileSync(join(src, `dir ${d}`, `file ${f}.bin`), rng.bytes(rng.int(0, 9000)));
    }
    writeFileSync(join(src, 'big.bin'), rng.bytes(2 * 1024 * 1024 + 3));
    return serve(await buildFat32Volume(src, { size: 40 * 1024 * 1024 }), true);
  },
  cleanup,
  boundaries: [512, 1024 * 1024],
});
