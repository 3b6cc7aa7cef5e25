/**
 * The local cache between the block device and the chunk store: a disk tier (a sparse slot file
 * holding whole chunks, CACHEDIR/slots) with a hard size limit, a small memory tier (LRU of chunk
 * copies), write-back with bounded dirty data, parallel uploads and downloads, and the journal that
 * makes flush() durable without waiting for uploads.
 *
 * Entry states (one entry per cached chunk; `slot` = its place in the slot file, -1 = all zeros):
 *
 *   (none) --read/write--> LOADING (ready pending: downloading, taking a slot)
 *   LOADING ------------> CLEAN (in cleanLru, evictable)
 *   CLEAN --write/zero--> DIRTY (in dirtyQueue; uploads after writeDelayMs or at once under pressure)
 *   DIRTY --upload ok, no write meanwhile--> CLEAN
 *   CLEAN --slot needed elsewhere--> (none)   [after the journal's clean record is durable]
 *
 * Writes are acknowledged once staged: copied into the chunk's memory copy and queued as a slot
 * write (per chunk, in order: Entry.io); flush() waits for them and makes the slots durable.
 *
 * Disk usage never exceeds the limit: the slot file has at most `nSlots` chunks, the journal is
 * compacted before it outgrows its reserve. Writers wait (back-pressure) when `maxDirty` chunks are
 * dirty, every slot is dirty or busy, or the staged bytes reach their limit. A failing store keeps
 * dirty data and makes waiting writers fail with EIO rather than hang. A clean close leaves an index
 * of its slots (cache-index.ts) that the next open may reuse.
 */
import { promises as fsp, constants as fsc, read, write } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import type { ChunkStore } from './chunks.js';
import type { Journal } from './journal.js';
import { writeCacheIndex, type IndexedSlot } from './cache-index.js';

export interface CacheOptions {
  /** Hard limit on the bytes the cache directory holds (slot file + journal + stats file). */
  cacheSize: number;
  /** Bytes of chunk copies kept in memory. */
  memoryCacheSize: number;
  /** Parallel uploads (default 32) and downloads (default 16). */
  uploadConcurrency?: number;
  downloadConcurrency?: number;
  /** Chunks to read ahead on sequential reads (default: 8 MiB worth). */
  readAhead?: number;
  /** A dirty chunk waits this long after its last write before it uploads (default 100 ms). */
  writeDelayMs?: number;
  /** The writer session (session.ts) a clean close records in the cache index; none: no index. */
  session?: string;
}

interface Entry {
  index: number;
  slot: number;
  dirty: boolean;
  /** Bumped by every write; an upload marks the entry clean only when gen did not move. */
  gen: number;
  /** gen last committed to the journal by flush(). */
  flushedGen: number;
  /** Slot named by the last commit record for this chunk, if one may still be live in the journal. */
  journaledSlot: number | undefined;
  uploading: boolean;
  pins: number;
  /** Staged slot writes not yet landed; while > 0 the slot cannot be read, evicted or moved. */
  writing: number;
  /** Tail of the chain of staged slot writes (in write order; never rejects). */
  io: Promise<void>;
  ready: Promise<void> | undefined;
  lock: Promise<void>;
  lastWrite: number;
  failures: number;
  retryAt: number;
  /** CRC-32 of the plaintext while the slot holds exactly the stored chunk (for the cache index). */
  crc: number | undefined;
}

/** Bytes of the cache directory kept for the journal and the stats file besides the slots. */
const RESERVE_FIXED = 256 * 1024;
const RECORD_BYTES = 60; // up to 3 journal records of 20 bytes per slot

export function slotsFor(cacheSize: number, chunkSize: number): number {
  return Math.floor((cacheSize - RESERVE_FIXED) / (chunkSize + RECORD_BYTES));
}

export interface CacheStats {
  cacheLimit: number;
  cacheBytes: number;
  cachedChunks: number;
  memoryLimit: number;
  memoryBytes: number;
  memoryHits: number;
  diskHits: number;
  misses: number;
  dirtyChunks: number;
  dirtyBytes: number;
  uploadsInFlight: number;
  downloadsInFlight: number;
  uploadFailures: number;
}

export class ChunkCache {
  readonly chunkSize: number;
  private nSlots: number;
  private nextSlot = 0;
  private freeSlots: number[] = [];
  private readonly entries = new Map<number, Entry>();
  private readonly cleanLru = new Map<number, Entry>();
  private readonly dirtyQueue = new Set<Entry>();
  private readonly mem = new Map<number, Buffer>();
  private memBytes = 0;
  private memLimit: number;
  private maxDirty: number;
  private readonly uploadConcurrency: number;
  private readonly downloadConcurrency: number;
  readonly readAhead: number;
  private readonly writeDelayMs: number;
  private uploadsInFlight = 0;
  private downloadsInFlight = 0;
  private downloadWaiters: (() => void)[] = [];
  private waiters: (() => void)[] = [];
  private pumpTimer: NodeJS.Timeout | undefined;
  private urgent = 0;
  private flushChain: Promise<void> = Promise.resolve();
  private storeError: BridgeError | undefined;
  /** Bytes of acknowledged writes whose slot writes are still in flight, and their limit. */
  private stagedBytes = 0;
  private readonly stagedLimit: number;
  /** A staged slot write failed: the cache file is unusable and every later flush reports it. */
  private slotError: BridgeError | undefined;
  private consecutiveFailures = 0;
  private closed = false;
  private readonly counters = { memoryHits: 0, diskHits: 0, misses: 0, uploadFailures: 0 };
  private readonly session: string | undefined;

  private constructor(
    private readonly store: ChunkStore,
    private readonly journal: Journal,
    private readonly slots: fsp.FileHandle,
    /** The slot file again, opened O_DSYNC: a write through it syncs just its own range. */
    private readonly slotsDsync: fsp.FileHandle,
    private readonly dir: string,
    private cacheSize: number,
    o: CacheOptions,
    private readonly log: Logger,
  ) {
    this.chunkSize = store.chunkSize;
    this.nSlots = slotsFor(cacheSize, this.chunkSize);
    this.memLimit = o.memoryCacheSize;
    this.maxDirty = Math.max(1, Math.floor((this.nSlots * 3) / 4));
    this.uploadConcurrency = o.uploadConcurrency ?? 32;
    this.downloadConcurrency = o.downloadConcurrency ?? 16;
    this.readAhead = o.readAhead ?? Math.max(1, Math.floor((8 * 1024 * 1024) / this.chunkSize));
    this.writeDelayMs = o.writeDelayMs ?? 100;
    this.stagedLimit = Math.max(16 * this.chunkSize, this.memLimit);
    this.session = o.session;
  }

  /**
   * Opens the cache in `dir`: replays the journal (uploads every chunk a flush acknowledged but no
   * upload finished), then reuses the `warm` slots of the last clean stop (when nothing was pending)
   * or starts empty. Fails, changing nothing, when the store cannot take the replayed chunks.
   */
  static async open(
    store: ChunkStore,
    journal: Journal,
    pending: Map<number, number>,
    dir: string,
    o: CacheOptions,
    log: Logger,
    warm?: IndexedSlot[],
  ): Promise<ChunkCache> {
    const chunk = store.chunkSize;
    if (slotsFor(o.cacheSize, chunk) < 8) {
      throw new BridgeError('EINVAL', `cache size ${o.cacheSize} is too small: it must hold at least 8 chunks of ${chunk} bytes plus ${RESERVE_FIXED} bytes`);
    }
    const slots = await fsp.open(join(dir, 'slots'), fsc.O_RDWR | fsc.O_CREAT, 0o600);
    let slotsDsync: fsp.FileHandle | undefined;
    try {
      slotsDsync = await fsp.open(join(dir, 'slots'), fsc.O_RDWR | fsc.O_DSYNC);
      if (pending.size) {
        log.info('replaying cache journal: uploading chunks acknowledged before the last stop', { chunks: pending.size });
        const items = [...pending];
        let next = 0;
        const worker = async (): Promise<void> => {
          while (next < items.length) {
            const [index, slot] = items[next++]!;
            let data: Buffer | null = null;
            if (slot >= 0) {
              data = Buffer.alloc(chunk);
              await readFully(slots, data, slot * chunk);
            }
            await store.put(index, data);
          }
        };
        await Promise.all(Array.from({ length: Math.min(16, items.length) }, worker));
        log.info('journal replayed', { chunks: pending.size });
      }
      // Everything acknowledged is in the store now: start with an empty journal.
      await journal.rewrite([]);
      const cache = new ChunkCache(store, journal, slots, slotsDsync, dir, o.cacheSize, o, log);
      // The slots of the last clean stop, when nothing changed the volume since; else an empty file.
      if (warm?.length && !pending.size) await cache.reuse(warm);
      else await slots.truncate(0);
      return cache;
    } catch (e) {
      await slots.close();
      await slotsDsync?.close();
      throw e;
    }
  }

  /**
   * Takes over the slots a clean stop listed (cache-index.ts) as CLEAN entries, each after checking
   * its bytes against the CRC recorded for it; the rest of the slot file is cut off or reused.
   */
  private async reuse(listed: IndexedSlot[]): Promise<void> {
    const seen = new Set<number>();
    const candidates = listed.filter((s) => s.slot < this.nSlots && this.store.has(s.index) && !seen.has(s.slot) && seen.add(s.slot));
    let next = 0;
    let bad = 0;
    const kept: IndexedSlot[] = [];
    const check = async (): Promise<void> => {
      const buf = Buffer.allocUnsafe(this.chunkSize);
      while (next < candidates.length) {
        const c = candidates[next++]!;
        await readFully(this.slots, buf, c.slot * this.chunkSize);
        if (crc32(buf) === c.crc) kept.push(c);
        else bad++;
      }
    };
    await Promise.all(Array.from({ length: 8 }, check));
    const used = new Set<number>();
    for (const c of kept) {
      if (this.entries.has(c.index)) continue;
      const e = this.newEntry(c.index);
      e.slot = c.slot;
      e.crc = c.crc;
      this.cleanLru.set(c.index, e);
      used.add(c.slot);
      this.nextSlot = Math.max(this.nextSlot, c.slot + 1);
    }
    for (let s = 0; s < this.nextSlot; s++) if (!used.has(s)) this.freeSlots.push(s);
    await this.slots.truncate(this.nextSlot * this.chunkSize);
    this.log.info('reusing the cache of the last clean stop', { chunks: used.size, failedCheck: bad, dropped: listed.length - candidates.length });
  }

  // ---- reads ----

  /** Fills `target` with chunk `index` from byte `off` of the chunk. */
  async read(index: number, target: Uint8Array, off: number): Promise<void> {
    for (;;) {
      const e = this.entries.get(index);
      if (e) {
        if (e.ready) {
          await e.ready.catch(() => undefined);
          continue;
        }
        this.touch(e);
        if (e.slot < 0) {
          target.fill(0);
          return;
        }
        const m = this.memGet(index);
        if (m) {
          this.counters.memoryHits++;
          target.set(m.subarray(off, off + target.length));
          return;
        }
        if (e.writing > 0) {
          // Acknowledged writes are still on their way to the slot.
          await e.io;
          continue;
        }
        // After a failed slot write a slot may hold old bytes: never serve them.
        if (this.slotError) throw this.slotError;
        this.counters.diskHits++;
        e.pins++;
        try {
          const gen = e.gen;
          const quiet = e.writing === 0;
          if (this.memLimit >= this.chunkSize) {
            const whole = Buffer.allocUnsafe(this.chunkSize);
            await readFully(this.slots, whole, e.slot * this.chunkSize);
            target.set(whole.subarray(off, off + target.length));
            // Keep a copy only when no write raced with the read (else the copy could be stale).
            if (quiet && e.gen === gen && e.writing === 0 && this.entries.get(index) === e) this.memSet(index, whole);
          } else {
            await readFully(this.slots, target, e.slot * this.chunkSize + off);
          }
        } finally {
          this.unpin(e);
        }
        return;
      }
      const m = this.memGet(index);
      if (m) {
        this.counters.memoryHits++;
        target.set(m.subarray(off, off + target.length));
        return;
      }
      if (!this.store.has(index)) {
        target.fill(0);
        return;
      }
      this.counters.misses++;
      await this.materialize(index, 'load');
    }
  }

  /** Starts loading chunks in the background (read-ahead); skips what is cached or absent. */
  prefetch(indices: number[]): void {
    for (const index of indices) {
      if (this.closed || this.downloadsInFlight >= this.downloadConcurrency) return;
      // Never let read-ahead push the cache into waiting for uploads.
      if (this.freeSlots.length + (this.nSlots - this.nextSlot) + this.cleanLru.size < this.readAhead * 2) return;
      if (this.entries.has(index) || this.mem.has(index) || !this.store.has(index)) continue;
      this.counters.misses++;
      this.materialize(index, 'load').catch((e: unknown) => this.log.debug('read-ahead failed', { chunk: index, error: errorMessage(e) }));
    }
  }

  // ---- writes ----

  /**
   * Writes `data` at byte `off` of chunk `index`. Returns once the bytes are in memory (the chunk's
   * copy and a staged slot write); flush() waits for staged slot writes before it syncs the file.
   */
  async write(index: number, data: Uint8Array, off: number): Promise<void> {
    await this.waitForDirtyRoom(index);
    await this.waitForStagingRoom();
    // The caller's buffer (FUSE's) is reused once we return: stage a copy.
    const copy = Buffer.allocUnsafe(data.length);
    copy.set(data);
    if (off === 0 && data.length === this.chunkSize && !this.entries.has(index)) {
      // A whole new chunk: nothing to fetch first.
      await this.materialize(index, 'replace', copy);
      this.schedule();
      return;
    }
    const e = await this.entryForUpdate(index);
    try {
      await this.locked(e, async () => {
        if (e.slot < 0) await this.giveSlot(e, null);
        this.applyToMemory(index, copy, off);
        this.markDirty(e);
        this.stage(e, copy, off);
      });
    } finally {
      this.unpin(e);
    }
    this.schedule();
  }

  /** Makes a whole chunk read as zeros (its object is deleted on upload). */
  async zeroChunk(index: number): Promise<void> {
    const cached = this.entries.get(index);
    if (!cached && !this.store.has(index)) {
      this.memDelete(index);
      return;
    }
    await this.waitForDirtyRoom(index);
    const e = await this.entryForUpdate(index, true);
    try {
      await this.locked(e, async () => {
        this.memDelete(index);
        this.markDirty(e);
        // Keep the slot (it may be named by a commit record) and zero it in place.
        if (e.slot >= 0) this.stage(e, this.zeros(), 0);
      });
    } finally {
      this.unpin(e);
    }
    this.schedule();
  }

  // ---- durability ----

  /**
   * Returns once every write completed before the call is durable: in the store, or in the slot file
   * (fdatasync'ed) with a commit record in the journal (fdatasync'ed).
   */
  flush(): Promise<void> {
    const run = this.flushChain.then(() => this.doFlush());
    this.flushChain = run.catch(() => undefined);
    return run;
  }

  private async doFlush(): Promise<void> {
    const batch: { e: Entry; gen: number; slot: number }[] = [];
    // A chunk still being created by a whole-chunk write has no completed write to make durable yet.
    for (const e of this.dirtyQueue) if (e.flushedGen !== e.gen && !e.ready) batch.push({ e, gen: e.gen, slot: e.slot });
    if (batch.length) {
      await this.syncSlots(batch.map((b) => b.e));
      if (this.slotError) throw this.slotError;
      for (const b of batch) this.journal.commit(b.e.index, b.slot);
    }
    await this.journal.sync();
    for (const b of batch) {
      b.e.flushedGen = Math.max(b.e.flushedGen, b.gen);
      b.e.journaledSlot = b.slot;
      // Uploaded while we synced: cancel the commit right away (keeps the slot-reuse rule simple).
      if (!b.e.dirty) this.journal.clean(b.e.index, b.slot);
    }
    if (this.journal.size > RESERVE_FIXED / 2 + this.nSlots * 20) await this.compactJournal();
    this.schedule();
  }

  /**
   * Makes the slots of `entries` durable. A few chunks: each is rewritten whole through the O_DSYNC
   * descriptor (from its memory copy, else from the slot), in its chain of staged writes, so that
   * the slot file's other dirty pages (clean cached chunks) are left to the kernel's write-back.
   * Many: one fdatasync of the whole file once their staged writes have landed.
   */
  private async syncSlots(entries: Entry[]): Promise<void> {
    const withData = entries.filter((e) => e.slot >= 0);
    if (withData.length * 2 > this.nextSlot) {
      await Promise.all(withData.map((e) => e.io));
      await this.slots.datasync();
      return;
    }
    await Promise.all(
      withData.map((e) =>
        this.chain(e, async () => {
          const pos = e.slot * this.chunkSize;
          let data = this.mem.get(e.index);
          if (!data) {
            data = Buffer.allocUnsafe(this.chunkSize);
            await readFully(this.slots, data, pos);
          }
          await writeFully(this.slotsDsync, data, pos);
        }),
      ),
    );
  }

  private async compactJournal(): Promise<void> {
    const live: [number, number][] = [];
    for (const e of this.dirtyQueue) if (e.journaledSlot !== undefined) live.push([e.index, e.journaledSlot]);
    await this.journal.rewrite(live);
  }

  /** Uploads every dirty chunk; EIO (data kept in cache and journal) when the store keeps failing. */
  async drain(): Promise<void> {
    this.urgent++;
    try {
      this.consecutiveFailures = 0;
      while (this.dirtyQueue.size) {
        this.pump();
        if (this.consecutiveFailures >= 3 && this.storeError) {
          throw new BridgeError('EIO', `cannot upload ${this.dirtyQueue.size} dirty chunks: ${this.storeError.message} (they stay in the cache journal)`);
        }
        await this.changed();
      }
    } finally {
      this.urgent--;
    }
  }

  // ---- limits ----

  /** Changes the disk limit while running; shrinking evicts (uploading dirty chunks first). */
  async setLimit(cacheSize: number): Promise<void> {
    const n = slotsFor(cacheSize, this.chunkSize);
    if (n < 8) throw new BridgeError('EINVAL', `cache size ${cacheSize} is too small: it must hold at least 8 chunks plus ${RESERVE_FIXED} bytes`);
    const shrinking = n < this.nSlots;
    this.nSlots = n;
    this.cacheSize = cacheSize;
    this.maxDirty = Math.max(1, Math.floor((n * 3) / 4));
    this.memLimit = Math.min(this.memLimit, cacheSize);
    if (!shrinking) return this.wake();
    this.freeSlots = this.freeSlots.filter((s) => s < n);
    this.urgent++;
    try {
      for (;;) {
        const high = [...this.entries.values()].filter((e) => e.slot >= n);
        if (!high.length) break;
        for (const e of high) if (this.evictable(e)) await this.evict(e);
        if (high.some((e) => this.entries.get(e.index) === e)) {
          this.pump();
          await this.changed();
        }
      }
    } finally {
      this.urgent--;
    }
    this.nextSlot = Math.min(this.nextSlot, n);
    await this.slots.truncate(n * this.chunkSize);
    this.log.info('cache limit changed', { cacheSize });
  }

  stats(): CacheStats {
    return {
      cacheLimit: this.cacheSize,
      // What the directory holds on disk: slots ever used (the file is sparse) plus the journal.
      cacheBytes: this.nextSlot * this.chunkSize + this.journal.size,
      cachedChunks: this.entries.size,
      memoryLimit: this.memLimit,
      memoryBytes: this.memBytes,
      ...this.counters,
      dirtyChunks: this.dirtyQueue.size,
      dirtyBytes: this.dirtyQueue.size * this.chunkSize,
      uploadsInFlight: this.uploadsInFlight,
      downloadsInFlight: this.downloadsInFlight,
    };
  }

  /** Flushes, uploads everything, and closes. On a store failure the data stays in the journal. */
  async close(): Promise<void> {
    await this.flush();
    try {
      await this.drain();
      await this.flush();
    } finally {
      this.closed = true;
      clearTimeout(this.pumpTimer);
      await Promise.all([...this.entries.values()].map((e) => e.io));
      try {
        // All uploaded: the journal can be empty, and an index lets the next open reuse the slots.
        if (this.dirtyQueue.size === 0 && this.session && !this.slotError) await this.writeIndex(this.session);
      } finally {
        await this.journal.close();
        await this.slots.close();
        await this.slotsDsync.close();
      }
    }
  }

  private async writeIndex(session: string): Promise<void> {
    const slots: IndexedSlot[] = [];
    for (const e of this.entries.values()) {
      if (e.slot >= 0 && e.slot < this.nSlots && !e.dirty && e.crc !== undefined) slots.push({ index: e.index, slot: e.slot, crc: e.crc });
    }
    await this.journal.rewrite([]);
    // The slots on disk must be the bytes the index vouches for.
    await this.slots.datasync();
    await writeCacheIndex(this.dir, this.store.volumeId, this.chunkSize, { session, slots });
    this.log.debug('cache index written', { chunks: slots.length });
  }

  // ---- entries and slots ----

  private newEntry(index: number): Entry {
    const e: Entry = {
      index,
      slot: -1,
      dirty: false,
      gen: 0,
      flushedGen: -1,
      journaledSlot: undefined,
      uploading: false,
      pins: 0,
      writing: 0,
      io: Promise.resolve(),
      ready: undefined,
      lock: Promise.resolve(),
      lastWrite: 0,
      failures: 0,
      retryAt: 0,
      crc: undefined,
    };
    this.entries.set(index, e);
    return e;
  }

  /**
   * Creates the entry of a chunk: 'load' downloads it (or finds it in memory); 'replace' fills it
   * with a whole new chunk's data; 'zero' makes an entry for a chunk that will read as zeros.
   */
  private materialize(index: number, mode: 'load' | 'replace' | 'zero', data?: Buffer): Promise<void> {
    const e = this.newEntry(index);
    if (mode === 'replace') {
      this.memDelete(index);
      this.markDirty(e);
    }
    // The body starts in a later microtask, so that `e.ready` is set before anything (pump, other
    // callers) can see the new entry.
    const ready = Promise.resolve().then(async () => {
      try {
        if (mode === 'replace') {
          await this.giveSlot(e, data!);
          this.memSet(index, data!);
          return;
        }
        let content: Buffer | null = mode === 'zero' ? null : (this.memGet(index) ?? null);
        if (!content && mode === 'load' && this.store.has(index)) {
          const got = await this.download(index);
          content = got?.plain ?? null;
          e.crc = got?.crc;
        }
        if (content) await this.giveSlot(e, content);
        if (content && !this.mem.has(index)) this.memSet(index, content);
        if (!e.dirty) this.cleanLru.set(index, e);
      } catch (err) {
        if (this.entries.get(index) === e) this.entries.delete(index);
        if (e.dirty) this.unmarkDirty(e);
        throw err;
      }
    });
    e.ready = ready;
    return ready.finally(() => {
      e.ready = undefined;
      this.wake();
    });
  }

  /** The entry of a chunk ready for a partial update (loaded from the store when needed). */
  private async entryForUpdate(index: number, forZero = false): Promise<Entry> {
    for (;;) {
      const e = this.entries.get(index);
      if (e) {
        if (e.ready) {
          await e.ready.catch(() => undefined);
          continue;
        }
        // Pinned until the caller's update is done, so eviction cannot take it in between.
        e.pins++;
        return e;
      }
      if (forZero) await this.materialize(index, 'zero').catch(() => undefined);
      else {
        if (this.store.has(index) && !this.mem.has(index)) this.counters.misses++;
        await this.materialize(index, 'load');
      }
    }
  }

  /** Takes a slot for `e` and stages `content` into it (null: zeros). */
  private async giveSlot(e: Entry, content: Buffer | null): Promise<void> {
    e.slot = await this.allocSlot();
    this.stage(e, content ?? this.zeros(), 0);
  }

  /**
   * Queues a write of `data` (owned by the cache from now on; it may be the chunk's memory copy, which
   * only later writes of the same chunk change, each staged after this one) at `off` of e's slot, after
   * e's earlier staged writes. The slot cannot move or be reused until it has landed.
   */
  private stage(e: Entry, data: Buffer, off: number): void {
    this.stagedBytes += data.length;
    const pos = e.slot * this.chunkSize + off;
    void this.chain(e, () => writeFully(this.slots, data, pos)).finally(() => {
      this.stagedBytes -= data.length;
      this.wake();
    });
  }

  /**
   * Runs `step` on e's slot after every slot write queued before it, and before any queued later.
   * Resolves when it is done; a failure is kept in slotError (every later flush fails with it).
   */
  private chain(e: Entry, step: () => Promise<void>): Promise<void> {
    e.writing++;
    e.io = e.io
      .then(step)
      .catch((err: unknown) => {
        this.slotError ??= new BridgeError('EIO', `cache file ${join(this.dir, 'slots')} failed a write: ${errorMessage(err)}`);
        this.log.error('cache slot write failed; flushes will fail', { chunk: e.index, error: errorMessage(err) });
      })
      .finally(() => {
        e.writing--;
        this.wake();
      });
    return e.io;
  }

  private zeroChunkBuf: Buffer | undefined;
  /** A shared all-zero chunk (only ever read). */
  private zeros(): Buffer {
    return (this.zeroChunkBuf ??= Buffer.alloc(this.chunkSize));
  }

  private async waitForStagingRoom(): Promise<void> {
    while (this.stagedBytes >= this.stagedLimit) {
      this.checkOpen();
      await this.changed();
    }
  }

  private async allocSlot(): Promise<number> {
    for (;;) {
      this.checkOpen();
      const free = this.freeSlots.pop();
      if (free !== undefined) return free;
      if (this.nextSlot < this.nSlots) return this.nextSlot++;
      const victim = this.findVictim();
      if (victim) {
        await this.evict(victim);
        continue;
      }
      // Every slot is dirty or busy: uploads must make room.
      this.urgent++;
      try {
        this.pump();
        this.throwIfStoreDown();
        await this.changed();
      } finally {
        this.urgent--;
      }
    }
  }

  private findVictim(): Entry | undefined {
    for (const e of this.cleanLru.values()) if (this.evictable(e)) return e;
    return undefined;
  }

  private evictable(e: Entry): boolean {
    return !e.dirty && !e.uploading && e.pins === 0 && e.writing === 0 && !e.ready;
  }

  /** Drops a clean entry and frees its slot, once no journal record can name the slot for it. */
  private async evict(e: Entry): Promise<void> {
    this.cleanLru.delete(e.index);
    if (this.entries.get(e.index) === e) this.entries.delete(e.index);
    this.memDelete(e.index);
    if (e.journaledSlot !== undefined) await this.journal.sync();
    if (e.slot >= 0 && e.slot < this.nSlots) this.freeSlots.push(e.slot);
    e.slot = -1;
  }

  private touch(e: Entry): void {
    if (this.cleanLru.has(e.index)) {
      this.cleanLru.delete(e.index);
      this.cleanLru.set(e.index, e);
    }
  }

  private unpin(e: Entry): void {
    e.pins--;
    if (e.pins === 0) this.wake();
  }

  private markDirty(e: Entry): void {
    e.gen++;
    e.crc = undefined;
    e.lastWrite = Date.now();
    if (!e.dirty) {
      e.dirty = true;
      this.cleanLru.delete(e.index);
      this.dirtyQueue.add(e);
    }
  }

  private unmarkDirty(e: Entry): void {
    e.dirty = false;
    this.dirtyQueue.delete(e);
  }

  private locked(e: Entry, fn: () => Promise<void>): Promise<void> {
    const run = e.lock.then(fn);
    e.lock = run.catch(() => undefined);
    return run;
  }

  private async waitForDirtyRoom(index: number): Promise<void> {
    while (this.dirtyQueue.size >= this.maxDirty && !this.entries.get(index)?.dirty) {
      this.checkOpen();
      this.urgent++;
      try {
        this.pump();
        this.throwIfStoreDown();
        await this.changed();
      } finally {
        this.urgent--;
      }
    }
  }

  private throwIfStoreDown(): void {
    if (this.storeError && this.consecutiveFailures >= 3) {
      throw new BridgeError('EIO', `the store keeps failing (${this.storeError.message}); ${this.dirtyQueue.size} dirty chunks are kept in the cache`);
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new BridgeError('CLOSED', 'the store cache is closed');
  }

  // ---- memory tier ----

  private memGet(index: number): Buffer | undefined {
    const m = this.mem.get(index);
    if (m) {
      this.mem.delete(index);
      this.mem.set(index, m);
    }
    return m;
  }

  private memSet(index: number, data: Buffer): void {
    if (this.memLimit < this.chunkSize) return;
    this.memDelete(index);
    this.mem.set(index, data);
    this.memBytes += data.length;
    for (const [k, v] of this.mem) {
      if (this.memBytes <= this.memLimit) break;
      this.mem.delete(k);
      this.memBytes -= v.length;
    }
  }

  private memDelete(index: number): void {
    const m = this.mem.get(index);
    if (m) {
      this.mem.delete(index);
      this.memBytes -= m.length;
    }
  }

  private applyToMemory(index: number, data: Uint8Array, off: number): void {
    this.mem.get(index)?.set(data, off);
  }

  // ---- uploads and downloads ----

  private async download(index: number): Promise<{ plain: Buffer; crc: number } | null> {
    while (this.downloadsInFlight >= this.downloadConcurrency) await new Promise<void>((r) => this.downloadWaiters.push(r));
    this.downloadsInFlight++;
    try {
      return await this.store.get(index);
    } finally {
      this.downloadsInFlight--;
      this.downloadWaiters.shift()?.();
    }
  }

  /** Schedules uploads: dirty chunks go after writeDelayMs, or at once under pressure or on drain. */
  private schedule(): void {
    this.pump();
  }

  private pump(): void {
    if (this.closed && this.urgent === 0) return;
    const now = Date.now();
    const pressure = this.urgent > 0 || this.dirtyQueue.size >= this.maxDirty / 2;
    let wakeAt = Infinity;
    for (const e of this.dirtyQueue) {
      if (this.uploadsInFlight >= this.uploadConcurrency) break;
      // Reading the slot while a staged write is landing would see old bytes with the new gen and mark
      // the chunk clean; the memory copy always holds every acknowledged write.
      if (e.uploading || e.ready || (e.writing > 0 && !this.mem.has(e.index))) continue;
      const due = Math.max(e.retryAt, pressure ? 0 : e.lastWrite + this.writeDelayMs);
      if (due > now) {
        wakeAt = Math.min(wakeAt, due);
        continue;
      }
      void this.upload(e);
    }
    if (wakeAt !== Infinity && !this.pumpTimer) {
      this.pumpTimer = setTimeout(
        () => {
          this.pumpTimer = undefined;
          this.pump();
        },
        Math.max(5, wakeAt - now),
      );
    }
  }

  private async upload(e: Entry): Promise<void> {
    e.uploading = true;
    this.uploadsInFlight++;
    const gen = e.gen;
    try {
      let plain: Buffer | null = null;
      if (e.slot >= 0) {
        e.pins++;
        try {
          // The memory copy itself, not a copy of it: a write racing with the encoding bumps gen,
          // so this upload then leaves the chunk dirty and it uploads again.
          const m = this.mem.get(e.index);
          if (m) plain = m;
          else {
            // A slot that missed a write must not be uploaded as the chunk (it would be marked clean).
            if (this.slotError) throw this.slotError;
            plain = Buffer.allocUnsafe(this.chunkSize);
            await readFully(this.slots, plain, e.slot * this.chunkSize);
          }
        } finally {
          this.unpin(e);
        }
      }
      const crc = await this.store.put(e.index, plain);
      this.consecutiveFailures = 0;
      this.storeError = undefined;
      e.failures = 0;
      if (e.gen === gen) {
        this.unmarkDirty(e);
        e.crc = crc;
        if (e.journaledSlot !== undefined) this.journal.clean(e.index, e.journaledSlot);
        if (e.slot < 0) {
          if (this.entries.get(e.index) === e) this.entries.delete(e.index);
          e.journaledSlot = undefined;
        } else if (e.slot >= this.nSlots && e.writing === 0) await this.evict(e);
        else this.cleanLru.set(e.index, e);
      }
    } catch (err) {
      this.counters.uploadFailures++;
      this.consecutiveFailures++;
      this.storeError = err instanceof BridgeError ? err : new BridgeError('EIO', errorMessage(err));
      e.failures++;
      e.retryAt = Date.now() + Math.min(30_000, 500 * 2 ** Math.min(6, e.failures - 1));
      this.log.warn('upload failed; the chunk stays dirty and will be retried', { chunk: e.index, failures: e.failures, error: errorMessage(err) });
    } finally {
      e.uploading = false;
      this.uploadsInFlight--;
      this.wake();
      this.pump();
    }
  }

  /** Resolves at the next state change (upload done, slot freed, entry ready). */
  private changed(): Promise<void> {
    return new Promise((r) => {
      this.waiters.push(r);
      // Failures back off with timers: never wait longer than that without looking again.
      setTimeout(r, 1000).unref();
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const r of w) r();
  }
}

/** Reads `target.length` bytes at `pos` (zeros past the end of the file). */
function readFully(fh: fsp.FileHandle, target: Uint8Array, pos: number): Promise<void> {
  // The callback API on the descriptor: FileHandle's promise methods cost more per call.
  return new Promise((res, rej) => {
    const step = (done: number): void => {
      if (done >= target.length) return res();
      read(fh.fd, target, done, target.length - done, pos + done, (err, n) => {
        if (err) return rej(err);
        if (n === 0) {
          target.fill(0, done);
          return res();
        }
        step(done + n);
      });
    };
    step(0);
  });
}

function writeFully(fh: fsp.FileHandle, data: Uint8Array, pos: number): Promise<void> {
  return new Promise((res, rej) => {
    const step = (done: number): void => {
      if (done >= data.length) return res();
      write(fh.fd, data, done, data.length - done, pos + done, (err, n) => (err ? rej(err) : step(done + n)));
    };
    step(0);
  });
}
