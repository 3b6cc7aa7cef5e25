/**
 * The single-writer lock: `lock.json` in the store, created only when absent, held as a lease.
 *
 * The holder renews it every leaseMs/3 (a heartbeat: `renewed` and a counter `beat`). A writer that
 * finds a lock whose last renewal is older than its lease (by its own clock) watches it for one more
 * lease period; when the heartbeat has not moved, the holder is gone and the lock is taken over.
 * Watching, not comparing clocks, keeps a live holder safe from a contender whose clock is ahead.
 * The holder stops uploading (the device refuses writes, EIO) once it could not renew for 2/3 of
 * its lease or finds the lock taken, so a takeover never meets a second writer that still writes.
 *
 * Creation is put-if-absent (O_EXCL on a directory; `If-None-Match: *` on S3, plus a look-before for
 * endpoints that ignore the header — s3rver does). After taking a lock the writer waits a moment and
 * reads it back, so that of two writers racing for a stale lock only one goes on.
 * `--break-lock` (`breakLock`) takes a lock at once, without waiting for its lease: only when that
 * holder is really gone.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { LOCK_KEY, type ObjectBackend } from './backend.js';

export interface LockInfo {
  id: string;
  host: string;
  pid: number;
  since: string;
  /** Lease length in ms (absent in locks of older versions: those never expire). */
  leaseMs?: number;
  /** Time of the last renewal (the holder's clock) and the renewal counter. */
  renewed?: string;
  beat?: number;
}

export const DEFAULT_LEASE_MS = 30_000;
const MAX_LEASE_MS = 10 * 60_000;

export interface LockOptions {
  breakLock?: boolean;
  /** Lease of the new lock (default 30 s). */
  leaseMs?: number;
  /** Pause before reading a lock taken without an atomic create back (default min(0.5 s, lease / 10)). */
  settleMs?: number;
  log: Logger;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class StoreLock {
  private timer: NodeJS.Timeout | undefined;
  private lastRenewal: number;
  private lostTo: string | undefined;
  private released = false;
  private readonly listeners: ((why: string) => void)[] = [];

  private constructor(
    private readonly backend: ObjectBackend,
    readonly info: LockInfo,
    private readonly log: Logger,
  ) {
    this.lastRenewal = performance.now();
  }

  static async acquire(backend: ObjectBackend, o: LockOptions): Promise<StoreLock> {
    const leaseMs = Math.min(MAX_LEASE_MS, Math.max(100, o.leaseMs ?? DEFAULT_LEASE_MS));
    const info: LockInfo = {
      id: randomBytes(8).toString('hex'),
      host: hostname(),
      pid: process.pid,
      since: new Date().toISOString(),
      leaseMs,
      renewed: new Date().toISOString(),
      beat: 0,
    };
    const lock = new StoreLock(backend, info, o.log);
    const settle = o.settleMs ?? Math.min(500, leaseMs / 10);
    if (await backend.putIfAbsent(LOCK_KEY, lock.encode())) {
      // A create that cannot race (O_EXCL, a conditional PUT the endpoint honours) needs no read-back.
      if (await backend.atomicCreate?.()) return lock;
      o.log.debug('the store does not honour conditional creates: reading the new lock back', { location: backend.location });
      return lock.settle(settle);
    }
    const holder = await readLock(backend);
    if (o.breakLock) {
      o.log.warn('breaking the volume lock', { holder });
      return lock.takeOver(settle);
    }
    if (!holder?.leaseMs || !holder.renewed) throw busy(backend, holder, 'its lock has no lease (older version): ');
    const age = Date.now() - Date.parse(holder.renewed);
    if (!(age > holder.leaseMs)) throw busy(backend, holder, `it renewed its lease ${Math.max(0, Math.round(age / 1000))} s ago; `);
    // Expired by our clock: make sure by watching its heartbeat for one lease period.
    const watchMs = Math.min(MAX_LEASE_MS, holder.leaseMs) + settle;
    o.log.info('the volume lock looks expired; watching its heartbeat before taking it over', { holder, watchMs });
    await sleep(watchMs);
    const now = await readLock(backend);
    if (now && (now.id !== holder.id || now.beat !== holder.beat)) throw busy(backend, now, 'its lease is being renewed; ');
    o.log.warn('taking over an expired volume lock (not renewed for a whole lease)', { holder, leaseMs: holder.leaseMs });
    return lock.takeOver(settle);
  }

  /** Calls `listener` once if the lease is lost (taken over, or not renewed in time). */
  onLost(listener: (why: string) => void): void {
    this.listeners.push(listener);
  }

  /** Throws EIO when this writer may no longer change the volume. */
  check(): void {
    if (this.lostTo) throw new BridgeError('EIO', this.lostTo);
    const leaseMs = this.info.leaseMs ?? DEFAULT_LEASE_MS;
    if (!this.released && performance.now() - this.lastRenewal > (leaseMs * 2) / 3) {
      this.lose(
        `the writer lock of ${this.backend.location} could not be renewed for ${Math.round((leaseMs * 2) / 3000)} s; writes are refused (data stays in the cache journal)`,
      );
      throw new BridgeError('EIO', this.lostTo!);
    }
  }

  /** Starts the heartbeat (every lease / 3). */
  startHeartbeat(): void {
    const every = (this.info.leaseMs ?? DEFAULT_LEASE_MS) / 3;
    const beat = async (): Promise<void> => {
      const sent = performance.now();
      // Too late to renew (the process was stopped, the store unreachable): another writer may hold it now.
      try {
        this.check();
      } catch {
        return;
      }
      try {
        const cur = await readLock(this.backend);
        if (this.released) return;
        if (cur?.id !== this.info.id) {
          this.lose(
            `the writer lock of ${this.backend.location} was taken over${cur ? ` by pid ${cur.pid} on ${cur.host}` : ''}; writes are refused (data stays in the cache journal)`,
          );
          return;
        }
        this.info.beat = (this.info.beat ?? 0) + 1;
        await this.backend.put(LOCK_KEY, this.encode());
        if (!this.lostTo) this.lastRenewal = sent;
      } catch (e) {
        this.log.warn('could not renew the volume lock; retrying', { error: errorMessage(e) });
      }
    };
    const tick = (): void => {
      this.timer = setTimeout(() => void beat().finally(() => !this.released && !this.lostTo && tick()), every);
      this.timer.unref();
    };
    tick();
  }

  /** Stops the heartbeat, leaving the lock in the store (it expires after its lease). */
  stop(): void {
    this.released = true;
    clearTimeout(this.timer);
  }

  /** Stops the heartbeat and removes the lock if it is still ours. */
  async release(): Promise<void> {
    this.stop();
    if (this.lostTo) return;
    const cur = await readLock(this.backend);
    if (cur?.id === this.info.id) await this.backend.delete(LOCK_KEY);
  }

  /** The lock object, renewed now. */
  private encode(): Buffer {
    this.info.renewed = new Date().toISOString();
    return Buffer.from(JSON.stringify(this.info) + '\n');
  }

  private lose(why: string): void {
    if (this.lostTo) return;
    this.lostTo = why;
    clearTimeout(this.timer);
    this.log.error('lost the volume lock', { reason: why });
    for (const l of this.listeners) l(why);
  }

  private async takeOver(settle: number): Promise<StoreLock> {
    await this.backend.delete(LOCK_KEY);
    if (!(await this.backend.putIfAbsent(LOCK_KEY, this.encode()))) {
      throw new BridgeError('EBUSY', `volume at ${this.backend.location} was locked again by another writer while its lock was taken over`);
    }
    return this.settle(settle);
  }

  /** Reads a fresh lock back after a pause: a writer racing for the same stale lock loses here. */
  private async settle(ms: number): Promise<StoreLock> {
    await sleep(ms);
    const cur = await readLock(this.backend);
    if (cur?.id !== this.info.id) throw busy(this.backend, cur, 'it took the lock at the same time; ');
    this.lastRenewal = performance.now();
    return this;
  }
}

function busy(backend: ObjectBackend, holder: LockInfo | undefined, why: string): BridgeError {
  const who = holder ? `pid ${holder.pid} on ${holder.host} since ${holder.since}` : 'another writer';
  const lease = holder?.leaseMs ? ` (lease ${Math.round(holder.leaseMs / 1000)} s: once it stops renewing, the next mount takes the lock over by itself)` : '';
  return new BridgeError(
    'EBUSY',
    `volume at ${backend.location} is locked by ${who}; ${why}if that process is gone, break the stale lock with: store mount --break-lock ...${lease}`,
    { holder },
  );
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
