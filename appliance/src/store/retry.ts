/**
 * A backend wrapper that retries transient failures (5xx, throttling, timeouts, resets) with
 * exponential backoff and jitter. A failure that outlives every attempt is thrown as EIO naming the
 * object and the attempts; the cache above keeps dirty data and tries again later.
 */
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { isTransient, type ObjectBackend, type ObjectInfo } from './backend.js';

export interface RetryOptions {
  /** Attempts per operation, including the first (default 6). */
  attempts?: number;
  /** First pause in ms (default 50), doubled each time up to maxDelayMs (default 4000). */
  baseDelayMs?: number;
  maxDelayMs?: number;
  log?: Logger;
}

export class RetryingBackend implements ObjectBackend {
  readonly location: string;
  private readonly attempts: number;
  private readonly base: number;
  private readonly max: number;
  /** Operations that needed at least one retry (for stats). */
  retried = 0;

  constructor(
    private readonly inner: ObjectBackend,
    private readonly o: RetryOptions = {},
  ) {
    this.location = inner.location;
    this.attempts = o.attempts ?? 6;
    this.base = o.baseDelayMs ?? 50;
    this.max = o.maxDelayMs ?? 4000;
  }

  private async retry<T>(what: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        if (!isTransient(e)) throw e;
        if (attempt >= this.attempts) {
          throw new BridgeError('EIO', `${what} failed after ${attempt} attempts: ${errorMessage(e)}`, { attempts: attempt }, { cause: e });
        }
        if (attempt === 1) this.retried++;
        const delay = Math.min(this.max, this.base * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
        this.o.log?.debug('store operation failed, retrying', { op: what, attempt, delayMs: Math.round(delay), error: errorMessage(e) });
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  get(key: string): Promise<Buffer | undefined> {
    return this.retry(`GET ${key}`, () => this.inner.get(key));
  }
  put(key: string, data: Uint8Array): Promise<void> {
    return this.retry(`PUT ${key}`, () => this.inner.put(key, data));
  }
  putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    return this.retry(`PUT ${key}`, () => this.inner.putIfAbsent(key, data));
  }
  async atomicCreate(): Promise<boolean> {
    return this.inner.atomicCreate ? this.retry('conditional create probe', () => this.inner.atomicCreate!()) : false;
  }
  delete(key: string): Promise<void> {
    return this.retry(`DELETE ${key}`, () => this.inner.delete(key));
  }
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    // A listing is restarted as a whole on a transient failure (keys seen twice are de-duplicated by callers).
    const items = await this.retry(`LIST ${prefix}`, async () => {
      const out: ObjectInfo[] = [];
      for await (const o of this.inner.list(prefix)) out.push(o);
      return out;
    });
    yield* items;
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
