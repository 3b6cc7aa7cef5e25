/**
 * The tree: the second kind of value in bridge's pipeline (the first is the block device). A tree is
 * a mounted directory that SMB and NFS export. Who made it (a plain directory, a kernel mount of a
 * disk's filesystem) decides how it is closed.
 */
import { promises as fsp } from 'node:fs';
import { resolve } from 'node:path';
import { BridgeError } from '../../../shared/src/errors.js';

export interface Tree {
  /** The directory to export. */
  readonly path: string;
  /** Writes through this tree are refused (exports over it must be read-only too). */
  readonly readOnly: boolean;
  /** What is underneath, for status and for the xattr probe: e.g. "directory", "ext4 on /dev/loop3". */
  readonly description: string;
  /** Release what the tree holds (unmount, detach); a plain directory has nothing to release. */
  close(): Promise<void>;
}

/** An existing directory, served as it is. */
export async function directoryTree(path: string, readOnly: boolean): Promise<Tree> {
  const abs = resolve(path);
  let st;
  try {
    st = await fsp.stat(abs);
  } catch (e) {
    throw new BridgeError('ENOENT', `directory ${abs} does not exist`, {}, { cause: e });
  }
  if (!st.isDirectory()) throw new BridgeError('EINVAL', `${abs} is not a directory`);
  return { path: abs, readOnly, description: 'directory', close: async () => undefined };
}
