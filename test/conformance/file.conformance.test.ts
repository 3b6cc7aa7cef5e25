import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileBlockDevice } from '../../appliance/src/block/file.js';
import { blockDeviceConformance } from './block-device.js';

let dir = '';
const path = (): string => join(dir, 'disk.img');

blockDeviceConformance('file (sparse, 64 MiB)', {
  open: async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-file-'));
    return FileBlockDevice.open(path(), { size: 64 * 1024 * 1024 });
  },
  reopen: () => FileBlockDevice.open(path()),
  cleanup: async () => rmSync(dir, { recursive: true, force: true }),
});

blockDeviceConformance('file (read-only)', {
  open: async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-file-'));
    const rw = await FileBlockDevice.open(path(), { size: 5 * 1024 * 1024 + 17 });
    await rw.write(Buffer.from('some bytes that must read back the same'), 4000);
    await rw.close();
    return FileBlockDevice.open(path(), { readOnly: true });
  },
  cleanup: async () => rmSync(dir, { recursive: true, force: true }),
});
