/**
 * Device specs on the command line: `memory:SIZE` or `file:PATH`. Later stages add their own
 * openers (the chunked store, the FAT32 volume) through their own commands.
 */
import { BridgeError } from '../../../shared/src/errors.js';
import { parseSize } from '../../../shared/src/size.js';
import type { BlockDevice } from './device.js';
import { FileBlockDevice } from './file.js';
import { MemoryBlockDevice } from './memory.js';

export interface DeviceSpecOptions {
  readOnly?: boolean;
  /** For file: create or grow to this size. */
  size?: number;
}

export async function openDeviceSpec(spec: string, options: DeviceSpecOptions = {}): Promise<BlockDevice> {
  const colon = spec.indexOf(':');
  const kind = colon < 0 ? spec : spec.slice(0, colon);
  const arg = colon < 0 ? '' : spec.slice(colon + 1);
  switch (kind) {
    case 'memory':
      if (!arg) throw new BridgeError('EINVAL', `device "${spec}": memory needs a size, e.g. memory:1G`);
      return new MemoryBlockDevice(parseSize(arg, `device "${spec}"`));
    case 'file':
      if (!arg) throw new BridgeError('EINVAL', `device "${spec}": file needs a path, e.g. file:/var/tmp/disk.img`);
      return FileBlockDevice.open(arg, options);
    default:
      throw new BridgeError('EINVAL', `device "${spec}": unknown kind "${kind}" (expected memory:SIZE or file:PATH)`);
  }
}
