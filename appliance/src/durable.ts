/** Making things durable on disk: the one place for fsync-by-path (directories after create/rename). */
import { constants as fsc, promises as fsp } from 'node:fs';

/** fsync a file or directory by path (a directory's fsync makes its entries — creates, renames — durable). */
export async function fsyncPath(path: string): Promise<void> {
  const fh = await fsp.open(path, fsc.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
