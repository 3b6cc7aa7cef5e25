import { MemoryBlockDevice } from '../../appliance/src/block/memory.js';
import { blockDeviceConformance } from './block-device.js';

blockDeviceConformance('memory (64 MiB, 1 MiB pages)', {
  open: async () => new MemoryBlockDevice(64 * 1024 * 1024),
  boundaries: [1024 * 1024],
});

blockDeviceConformance('memory (odd size 3 MiB + 1234)', {
  open: async () => new MemoryBlockDevice(3 * 1024 * 1024 + 1234),
  boundaries: [1024 * 1024],
});
