/**
 * The single-writer lock: `lock.json` in the store, created only when absent. A second writer gets
 * EBUSY naming the holder; a lock left by a killed process is broken with `store mount --break-lock`
 * (or `breakLock: true`) — only when that holder is really gone, or two writers will corrupt the volume.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { BridgeError } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { LOCK_KEY, type ObjectBackend } from './backend.js';

export interface LockInfo {
  id: string;
  host: string;
  pid: number;
  since: string;
}

export class StoreLock {
  private constructor(
    private readonly backend: ObjectBackend,
    readonly info: LockInfo,
  ) {}

  static async acquire(backend: ObjectBackend, o: { breakLock?: boolean; log: Logger }): Promise<StoreLock> {
    const info: LockInfo = { id: randomBytes(8).toString('hex'), host: hostname(), pid: process.pid, since: new Date().toISOString() };
    const body = Buffer.from(JSON.stringify(info) + '\n');
    if (await backend.putIfAbsent(LOCK_KEY, body)) return new StoreLock(backend, info);
    const holder = await readLock(backend);
    if (!o.breakLock) {
      throw new BridgeError(
        'EBUSY',
        `volume at ${backend.location} is locked by ${holder ? `pid ${holder.pid} on ${holder.host} since ${holder.since}` : 'another writer'}; ` +
          `if that process is gone, break the stale lock with: store mount --break-lock ...`,
        { holder },
      );
    }
    o.log.warn('breaking the volume lock', { holder });
    await backend.delete(LOCK_KEY);
    if (await backend.putIfAbsent(LOCK_KEY, body)) return new StoreLock(backend, info);
    throw new BridgeError('EBUSY', `volume at ${backend.location} was locked again by another writer while breaking its lock`);
  }

  /** Removes the lock if it is still ours. */
  async release(): Promise<void> {
    const cur = await readLock(this.backend);
    if (cur?.id === this.info.id) await this.backend.delete(LOCK_KEY);
  }
}

export async function readLock(backend: ObjectBackend): Promise<LockInfo | undefined> {
  const data = await backend.get(LOCK_KEY);
  if (!data) return undefined;
  try {
    return JSON.parse(data.toString('utf8')) as LockInfo;
  } catch {
    return undefined;
  }
}
