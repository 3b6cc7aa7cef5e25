import type { Command } from 'commander';
import { BridgeError } from '../../../shared/src/errors.js';
import { openDeviceSpec } from '../block/spec.js';
import { untilShutdown } from '../process/shutdown.js';
import { action, output, sizeOption } from './common.js';
import { publishDevice } from './publish.js';

interface ExposeOptions {
  device: string;
  size?: number;
  readOnly?: boolean;
  json?: boolean;
  nbd?: string;
  nbdName?: string;
}

export function register(program: Command): void {
  program
    .command('expose')
    .description('serve a block device as MOUNTPOINT/disk.img through FUSE and/or over NBD until SIGINT/SIGTERM')
    .requiredOption('--device <spec>', 'memory:SIZE (sparse, in memory) or file:PATH (a sparse file or block device)')
    .option('--size <size>', 'for file: create the file with this size when missing, or grow it', sizeOption('--size'))
    .option('--read-only', 'refuse writes')
    .option('--nbd <address>', 'also (or, without MOUNTPOINT, only) serve over NBD: a Unix socket path, HOST:PORT or :PORT (loopback only)')
    .option('--nbd-name <name>', 'NBD export name (default: the empty default name)')
    .option('--json', 'print what is served as JSON once ready')
    .argument('[mountpoint]', 'directory to mount disk.img on (created when missing; a stale mount is cleared); optional with --nbd')
    .addHelpText(
      'after',
      `
Examples:
  bridge-agent expose --device memory:1G /mnt/demo            # 1 GiB scratch disk in memory
  bridge-agent expose --device file:/var/tmp/d.img --size 4G /mnt/d
  mkfs.ext4 /mnt/demo/disk.img && mount -o loop /mnt/demo/disk.img /mnt/x
  bridge-agent expose --device memory:1G --nbd /run/demo.sock  # NBD only: nbdinfo 'nbd+unix:///?socket=/run/demo.sock'

fsync on the file (NBD_CMD_FLUSH over NBD) flushes the device. SIGINT/SIGTERM unmount cleanly.`,
    )
    .action(
      action(async (mountpoint: string | undefined, opts: ExposeOptions) => {
        const readOnly = opts.readOnly ?? false;
        if (!mountpoint && !opts.nbd) throw new BridgeError('EINVAL', 'give a MOUNTPOINT for the FUSE file, --nbd ADDRESS, or both');
        const device = await openDeviceSpec(opts.device, { readOnly, ...(opts.size !== undefined ? { size: opts.size } : {}) });
        const served = await publishDevice(device, {
          readOnly,
          fsname: `bridge-${opts.device.split(':')[0]}`,
          ...(mountpoint ? { mountpoint } : {}),
          ...(opts.nbd ? { nbd: opts.nbd } : {}),
          ...(opts.nbdName !== undefined ? { nbdName: opts.nbdName } : {}),
        });
        const writable = device.capabilities.writable && !readOnly;
        output(opts.json ?? false, { ...served, size: device.size, writable }, () =>
          [served.file && `serving ${served.file}`, served.nbd && `serving NBD ${served.nbd}`, `(${device.size} bytes); stop with Ctrl-C or SIGTERM`]
            .filter(Boolean)
            .join(' '),
        );
        await untilShutdown();
      }),
    );
}
