/**
 * Publishes one BlockDevice for `expose` and `fat32 serve`: as MOUNTPOINT/disk.img through FUSE,
 * over NBD, or both. Each transport's modules load only when asked for (fuse-native costs start-up
 * time an NBD-only export does not need). Shutdown order: NBD connections end (requests in flight
 * finish), the FUSE file is unmounted, then the device is flushed and closed.
 */
import { BridgeError } from '../../../shared/src/errors.js';
import type { BlockDevice } from '../block/device.js';
import { onShutdown } from '../process/shutdown.js';

export interface PublishOptions {
  mountpoint?: string;
  /** NBD address: socket path, unix:PATH, HOST:PORT or :PORT. */
  nbd?: string;
  nbdName?: string;
  readOnly: boolean;
  /** Shown as the FUSE mount's source. */
  fsname: string;
  flushOnClose?: boolean;
}

export interface Published {
  /** MOUNTPOINT/disk.img, when served through FUSE. */
  file?: string;
  /** NBD URI for clients (nbdinfo, nbdcopy, qemu-img), when served over NBD. */
  nbd?: string;
}

/** Starts the asked-for transports; on failure stops what started and closes the device. */
export async function publishDevice(device: BlockDevice, o: PublishOptions): Promise<Published> {
  if (!o.mountpoint && !o.nbd) throw new BridgeError('EINVAL', 'nothing to serve on: give a MOUNTPOINT (FUSE file), --nbd ADDRESS, or both');
  const out: Published = {};
  let stopNbd: (() => Promise<void>) | undefined;
  try {
    if (o.nbd) {
      const { NbdServer } = await import('../nbd/server.js');
      const server = await NbdServer.listen(device, { address: o.nbd, readOnly: o.readOnly, ...(o.nbdName !== undefined ? { name: o.nbdName } : {}) });
      stopNbd = () => server.close();
      out.nbd = server.uri;
    }
    if (o.mountpoint) {
      const { BlockFile } = await import('../fuse/block-file.js');
      const file = await BlockFile.expose(device, o.mountpoint, { readOnly: o.readOnly, fsname: o.fsname, flushOnClose: o.flushOnClose ?? false });
      // The FUSE file flushes and closes the device when it is unmounted.
      onShutdown('unmount block file', () => file.close(), file.mountpoint);
      out.file = file.path;
    } else {
      onShutdown('flush and close device', async () => {
        try {
          await device.flush();
        } finally {
          await device.close();
        }
      });
    }
  } catch (e) {
    await stopNbd?.().catch(() => undefined);
    await device.close().catch(() => undefined);
    throw e;
  }
  if (stopNbd) onShutdown('stop NBD server', stopNbd);
  return out;
}
