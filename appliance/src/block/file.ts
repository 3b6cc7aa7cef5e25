/**
 * A block device backed by a regular (sparse) file or a host block device.
 * Persistent: flush is fdatasync, so an acknowledged flush survives a crash of this process.
 */
import { promises as fsp, constants as fsc } from 'node:fs';
import { BridgeError } from '../../../shared/src/errors.js';
import { checkIo, Lifecycle, zeroByWriting, type BlockCapabilities, type BlockDevice } from './device.js';

export interface FileDeviceOptions {
  readOnly?: boolean;
  /** Create the file (sparse) with this size when missing; grow it when smaller. */
  size?: number;
}

export class FileBlockDevice implements BlockDevice {
  readonly blockSize = 4096;
  readonly capabilities: BlockCapabilities;
  private readonly life = new Lifecycle();

  private constructor(
    readonly path: string,
    private readonly fh: fsp.FileHandle,
    public size: number,
    readOnly: boolean,
    private readonly isBlockDevice: boolean,
  ) {
    this.capabilities = { writable: !readOnly, trim: false, persistent: true, resizable: !readOnly && !isBlockDevice };
  }

  static async open(path: string, options: FileDeviceOptions = {}): Promise<FileBlockDevice> {
    const readOnly = options.readOnly ?? false;
    let flags = readOnly ? fsc.O_RDONLY : fsc.O_RDWR;
    if (options.size !== undefined && !readOnly) flags |= fsc.O_CREAT;
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(path, flags, 0o600);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new BridgeError('ENOENT', `file device ${path} does not exist (give a size to create it)`, {}, { cause: e });
      throw new BridgeError('EIO', `cannot open file device ${path}: ${(e as Error).message}`, {}, { cause: e });
    }
    try {
      const st = await fh.stat();
      let size = st.size;
      const isBlock = st.isBlockDevice();
      if (isBlock) size = await blockDeviceSize(st.rdev);
      else if (!st.isFile()) throw new BridgeError('EINVAL', `${path} is neither a regular file nor a block device`);
      if (options.size !== undefined && options.size > size) {
        if (readOnly || isBlock) throw new BridgeError('EINVAL', `${path} holds ${size} bytes, fewer than the ${options.size} asked for`);
        await fh.truncate(options.size);
        size = options.size;
      }
      return new FileBlockDevice(path, fh, size, readOnly, isBlock);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async read(target: Uint8Array, offset: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, target.length, false)) return;
    let done = 0;
    while (done < target.length) {
      const { bytesRead } = await this.fh.read(target, done, target.length - done, offset + done);
      if (bytesRead === 0) {
        // The file was truncated behind our back: the missing tail reads as zeros, as a sparse hole would.
        target.fill(0, done);
        return;
      }
      done += bytesRead;
    }
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, data.length, true)) return;
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  }

  async flush(): Promise<void> {
    this.life.check();
    if (this.capabilities.writable) await this.fh.datasync();
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.zero(offset, length);
  }

  async zero(offset: number, length: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, length, true)) return;
    await zeroByWriting(this, offset, length);
  }

  async resize(newSize: number): Promise<void> {
    this.life.check();
    if (!this.capabilities.resizable) throw new BridgeError('ENOTSUP', `${this.path} cannot be resized`);
    if (newSize < this.size) throw new BridgeError('EINVAL', `cannot shrink ${this.path} from ${this.size} to ${newSize} bytes`);
    await this.fh.truncate(newSize);
    this.size = newSize;
  }

  async close(): Promise<void> {
    if (!this.life.close()) return;
    try {
      if (this.capabilities.writable) await this.fh.datasync();
    } finally {
      await this.fh.close();
    }
  }
}

/** Size of a block device from sysfs (stat reports 0 for block devices). */
async function blockDeviceSize(rdev: number): Promise<number> {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
  const sectors = Number((await fsp.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim());
  return sectors * 512;
}
