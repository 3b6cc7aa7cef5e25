/**
 * Whether a tree can hold user extended attributes, which Samba's streams_xattr (macOS resource
 * forks and Finder info) needs. Probed for real where a tool can set one; else judged by the
 * filesystem type. The answer comes with a reason for the log.
 */
import { listMounts } from '../fuse/mounts.js';
import { run } from './run.js';

export interface XattrSupport {
  supported: boolean;
  reason: string;
}

const XATTR_FILESYSTEMS = new Set(['ext2', 'ext3', 'ext4', 'xfs', 'btrfs', 'f2fs', 'zfs']);

/** The filesystem type that `path` lives on (longest mountpoint prefix). */
export async function filesystemOf(path: string): Promise<string> {
  const mounts = await listMounts();
  let best = { mountpoint: '', fstype: 'unknown' };
  for (const m of mounts) {
    const inside = path === m.mountpoint || path.startsWith(m.mountpoint.endsWith('/') ? m.mountpoint : m.mountpoint + '/');
    if (inside && m.mountpoint.length >= best.mountpoint.length) best = m;
  }
  return best.fstype;
}

const PROBE = "import os,sys\np=sys.argv[1]\nos.setxattr(p,'user.bridge-probe',b'1')\nos.removexattr(p,'user.bridge-probe')\n";

export async function probeXattr(path: string, readOnly: boolean): Promise<XattrSupport> {
  const fstype = await filesystemOf(path);
  if (!readOnly) {
    try {
      await run('setfattr', ['-n', 'user.bridge-probe', '-v', '1', path]);
      await run('setfattr', ['-x', 'user.bridge-probe', path]);
      return { supported: true, reason: `user xattrs work on ${fstype}` };
    } catch (e) {
      if ((e as { cause?: { code?: unknown } }).cause?.code !== 'ENOENT') return { supported: false, reason: `${fstype} at ${path} refuses user xattrs` };
    }
    try {
      await run('python3', ['-c', PROBE, path]);
      return { supported: true, reason: `user xattrs work on ${fstype}` };
    } catch (e) {
      if ((e as { cause?: { code?: unknown } }).cause?.code !== 'ENOENT') return { supported: false, reason: `${fstype} at ${path} refuses user xattrs` };
    }
  }
  return XATTR_FILESYSTEMS.has(fstype)
    ? { supported: true, reason: `${fstype} stores user xattrs` }
    : { supported: false, reason: `${fstype} may not store user xattrs (not probed)` };
}
