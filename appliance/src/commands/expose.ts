import type { Command } from 'commander';
import { openDeviceSpec } from '../block/spec.js';
import { BlockFile } from '../fuse/block-file.js';
import { onShutdown, untilShutdown } from '../process/shutdown.js';
import { action, output, sizeOption } from './common.js';

interface ExposeOptions {
  device: string;
  size?: number;
  readOnly?: boolean;
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('expose')
    .description('serve a block device as MOUNTPOINT/disk.img through FUSE until SIGINT/SIGTERM')
    .requiredOption('--device <spec>', 'memory:SIZE (sparse, in memory) or file:PATH (a sparse file or block device)')
    .option('--size <size>', 'for file: create the file with this size when missing, or grow it', sizeOption('--size'))
    .option('--read-only', 'refuse writes')
    .option('--json', 'print the served file as JSON once ready')
    .argument('<mountpoint>', 'directory to mount on (created when missing; a stale mount is cleared)')
    .addHelpText(
      'after',
      `
Examples:
  bridge-agent expose --device memory:1G /mnt/demo            # 1 GiB scratch disk in memory
  bridge-agent expose --device file:/var/tmp/d.img --size 4G /mnt/d
  mkfs.ext4 /mnt/demo/disk.img && mount -o loop /mnt/demo/disk.img /mnt/x

fsync on the file flushes the device. SIGINT/SIGTERM unmount cleanly.`,
    )
    .action(
      action(async (mountpoint: string, opts: ExposeOptions) => {
        const device = await openDeviceSpec(opts.device, { readOnly: opts.readOnly ?? false, ...(opts.size !== undefined ? { size: opts.size } : {}) });
        const file = await BlockFile.expose(device, mountpoint, { readOnly: opts.readOnly ?? false, fsname: `bridge-${opts.device.split(':')[0]}` });
        onShutdown('unmount block file', () => file.close(), file.mountpoint);
        output(
          opts.json ?? false,
          { file: file.path, size: device.size, writable: device.capabilities.writable && !opts.readOnly },
          () => `serving ${file.path} (${device.size} bytes); stop with Ctrl-C or SIGTERM`,
        );
        await untilShutdown();
      }),
    );
}
