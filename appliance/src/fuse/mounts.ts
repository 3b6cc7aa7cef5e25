/**
 * Mount bookkeeping for FUSE mountpoints: finds mounts left by a killed process and clears them.
 * Everything here is asynchronous or runs in a child process: the agent must never block its own
 * event loop on a path that its own FUSE mount serves (that thread would be the one to answer).
 */
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { BridgeError } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';

const run = promisify(execFile);

export interface MountEntry {
  mountpoint: string;
  fstype: string;
  source: string;
  /** Device number, e.g. "0:40" (names a FUSE mount's connection in fusectl). */
  device: string;
}

/** Mounts from /proc/self/mountinfo (octal escapes decoded). */
export async function listMounts(): Promise<MountEntry[]> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  const unescape = (s: string): string => s.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [pre, post] = line.split(' - ');
      const fields = (pre ?? '').split(' ');
      const [fstype, source] = (post ?? '').split(' ');
      return { mountpoint: unescape(fields[4] ?? ''), fstype: fstype ?? '', source: unescape(source ?? ''), device: fields[2] ?? '' };
    });
}

export async function findMount(mountpoint: string): Promise<MountEntry | undefined> {
  const abs = resolve(mountpoint);
  const mounts = await listMounts();
  // The last entry wins: later mounts hide earlier ones on the same path.
  return mounts.filter((m) => m.mountpoint === abs).pop();
}

/**
 * Asks a FUSE mount's server something with a time limit, so a hung server cannot hang us: the
 * lookup of a name that does not exist, which the kernel never answers from its caches (cached
 * attributes of the root would make a dead server look alive). ENOENT means a server answered.
 */
async function probeWithin(mountpoint: string, ms: number): Promise<'ok' | 'dead' | 'hung'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), ms)));
  const probe = fsp.stat(join(mountpoint, `.bridge-probe-${process.pid}-${Date.now()}`)).then(
    () => 'ok' as const,
    (e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? ('ok' as const) : ('dead' as const)),
  );
  try {
    return await Promise.race([probe, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves once the FUSE server at `mountpoint` answers requests (its INIT is done); async, so it may be our own. */
export async function untilAnswering(mountpoint: string): Promise<void> {
  await probeWithin(mountpoint, 5000);
}

export async function lazyUnmount(mountpoint: string): Promise<void> {
  try {
    await run('fusermount', ['-uz', mountpoint]);
  } catch {
    await run('umount', ['-l', mountpoint]);
  }
}

/**
 * Prepares a mountpoint: creates it when missing, clears a stale FUSE mount (its server is gone:
 * ENOTCONN, or it does not answer), and refuses one that a live process still serves.
 */
export async function prepareMountpoint(mountpoint: string, log: Logger): Promise<void> {
  const abs = resolve(mountpoint);
  const existing = await findMount(abs);
  if (existing) {
    if (!existing.fstype.startsWith('fuse')) {
      throw new BridgeError('EBUSY', `mountpoint ${abs} already has a ${existing.fstype} filesystem mounted on it`);
    }
    const state = await probeWithin(abs, 2000);
    if (state === 'ok') {
      throw new BridgeError('EBUSY', `mountpoint ${abs} is served by another live FUSE process (${existing.source}); stop it or run: fusermount -uz ${abs}`);
    }
    log.warn('clearing a stale FUSE mount left by a process that is gone', { mountpoint: abs, state, source: existing.source });
    await lazyUnmount(abs);
  }
  await fsp.mkdir(abs, { recursive: true });
  const st = await fsp.stat(abs);
  if (!st.isDirectory()) throw new BridgeError('EINVAL', `mountpoint ${abs} is not a directory`);
}
