/** Making things durable on disk: the one place for fsync-by-path (directories after create/rename). */
import { constants as fsc, promises as fsp } from 'node:fs';
import { dirname } from 'node:path';

/** fsync a file or directory by path (a directory's fsync makes its entries — creates, renames — durable). */
export async function fsyncPath(path: string): Promise<void> {
  const fh = await fsp.open(path, fsc.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Writes a file so that it is either the old one or the whole new one after a crash: tmp, fdatasync, rename, fsync of the directory. */
export async function writeFileAtomic(path: string, data: Uint8Array, mode = 0o600): Promise<void> {
  const tmp = `${path}.tmp`;
  const fh = await fsp.open(tmp, 'w', mode);
  try {
    await fh.writeFile(data);
    await fh.datasync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, path);
  await fsyncPath(dirname(path));
}
