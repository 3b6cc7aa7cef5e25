/**
 * The chunked, compressed, encrypted online block store: programmatic API (the agent daemon and
 * `bridge-agent store ...` both use it). The stack, bottom up, one file per layer:
 *
 *   backend-dir.ts / backend-s3.ts   objects in a directory or an S3 bucket
 *   retry.ts                         retries transient store errors with backoff
 *   codec.ts + chunks.ts             zero detection → zstd → AES-256-GCM, per chunk
 *   codec-pool.ts                    the codec on worker threads
 *   journal.ts + cache.ts            local disk + memory cache, write-back, crash-safe journal
 *   device.ts                        the BlockDevice
 *
 * Stable API: createStore, openStore (→ ChunkStoreDevice), readStoreInfo, fsckStore, storeStats,
 * defaultCacheDir. Options are documented in docs/store.md.
 */
import { promises as fsp } from 'node:fs';
import { availableParallelism, homedir } from 'node:os';
import { join } from 'node:path';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import { logger, type Logger } from '../../../shared/src/logger.js';
import { CHUNK_PREFIX, chunkIndexOf, HEADER_KEY, parseStoreLocation, type ObjectBackend } from './backend.js';
import { DirBackend } from './backend-dir.js';
import { ChunkCache } from './cache.js';
import { ChunkStore, rolledBack } from './chunks.js';
import { CodecPool } from './codec-pool.js';
import { ChunkStoreDevice, type ChunkStoreStats } from './device.js';
import { checkGrowth, decodeHeader, encodeHeader, newHeader, unlock, type Cipher, type Compression, type VolumeHeader } from './header.js';
import { Journal } from './journal.js';
import { takeCacheIndex, type IndexedSlot } from './cache-index.js';
import { cacheIsCurrent, readCacheSession, readWriter, writeCacheSession, writeWriter } from './session.js';
import { Manifest, startCheckpoints } from './manifest.js';
import { readLock, StoreLock, type LockInfo } from './lock.js';
import { RetryingBackend, type RetryOptions } from './retry.js';

export { ChunkStoreDevice, type ChunkStoreStats } from './device.js';
export type { VolumeHeader, Cipher, Compression } from './header.js';
export type { ObjectBackend } from './backend.js';

export interface StoreLocationOptions {
  /** `dir:PATH` or `s3://BUCKET/PREFIX`. */
  store: string;
  /** S3 endpoint URL (path-style addressing is used with it). */
  endpoint?: string;
  region?: string;
  /** S3 keys; else the AWS SDK's default chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  retry?: Omit<RetryOptions, 'log'>;
  /** Wraps the raw backend (below the retry layer): fault injection in tests, metering. */
  wrapBackend?: (backend: ObjectBackend) => ObjectBackend;
  log?: Logger;
}

export interface CreateStoreOptions extends StoreLocationOptions {
  /** Volume size in bytes. */
  size: number;
  /** Power of two from 4 KiB to 4 MiB (default 128 KiB). */
  chunkSize?: number;
  compression?: Compression;
  compressionLevel?: number;
  cipher?: Cipher;
  /** Required unless cipher is 'none'. */
  passphrase?: string;
  /** scrypt cost (default N=2^15, r=8, p=1). */
  kdf?: { N: number; r: number; p: number };
}

export interface OpenStoreOptions extends StoreLocationOptions {
  passphrase?: string;
  /** Local cache directory (default ~/.cache/bridge/store/VOLUMEID, or $XDG_CACHE_HOME/...). */
  cacheDir?: string;
  /** Hard limit of the cache directory in bytes (default 512 MiB). */
  cacheSize?: number;
  /** Bytes of chunk copies in memory (default min(32 MiB, cacheSize / 8)). */
  memoryCacheSize?: number;
  readOnly?: boolean;
  /** Remove a stale writer lock left by a process that is gone. */
  breakLock?: boolean;
  /** Lease of the writer lock: renewed every third of it; taken over after it expires (default 30 s). */
  leaseMs?: number;
  uploadConcurrency?: number;
  downloadConcurrency?: number;
  /** Chunks read ahead on sequential reads (default 8 MiB worth; 0 disables). */
  readAhead?: number;
  writeDelayMs?: number;
  /** Worker threads that compress, encrypt and decrypt chunks (default: one per core, at most 4; 0: main thread). */
  codecThreads?: number;
}

export function defaultCodecThreads(): number {
  return Math.min(4, availableParallelism());
}

export const DEFAULT_CHUNK_SIZE = 128 * 1024;
export const DEFAULT_CACHE_SIZE = 512 * 1024 * 1024;

/** The object backend for a location, with retries. */
export async function openBackend(o: StoreLocationOptions, create = false): Promise<ObjectBackend> {
  const loc = parseStoreLocation(o.store);
  let raw: ObjectBackend =
    loc.kind === 'dir'
      ? await DirBackend.open(loc.path, create)
      : // The AWS SDK is large: loaded only for S3 stores (agent start-up under TCG counts every module).
        new (await import('./backend-s3.js')).S3Backend({
          bucket: loc.bucket,
          prefix: loc.prefix,
          ...(o.endpoint ? { endpoint: o.endpoint } : {}),
          ...(o.region ? { region: o.region } : {}),
          ...(o.credentials ? { credentials: o.credentials } : {}),
        });
  if (o.wrapBackend) raw = o.wrapBackend(raw);
  return new RetryingBackend(raw, { ...o.retry, log: (o.log ?? logger()).child({ component: 'store' }) });
}

async function readHeader(backend: ObjectBackend): Promise<VolumeHeader> {
  const data = await backend.get(HEADER_KEY);
  if (!data) throw new BridgeError('ENOENT', `no volume at ${backend.location} (no ${HEADER_KEY}); create one with: bridge-agent store create`);
  return decodeHeader(data, backend.location);
}

/** Creates a new, all-zero volume. Refuses when a volume already exists there. */
export async function createStore(o: CreateStoreOptions): Promise<VolumeHeader> {
  const { header } = await newHeader({
    size: o.size,
    chunkSize: o.chunkSize ?? DEFAULT_CHUNK_SIZE,
    compression: o.compression ?? 'zstd',
    cipher: o.cipher ?? 'aes-256-gcm',
    ...(o.compressionLevel !== undefined ? { compressionLevel: o.compressionLevel } : {}),
    ...(o.passphrase !== undefined ? { passphrase: o.passphrase } : {}),
    ...(o.kdf ? { kdf: o.kdf } : {}),
  });
  const backend = await openBackend(o, true);
  try {
    if (!(await backend.putIfAbsent(HEADER_KEY, encodeHeader(header)))) {
      throw new BridgeError('EBUSY', `a volume already exists at ${backend.location}; nothing was changed`);
    }
    (o.log ?? logger()).child({ component: 'store' }).info('volume created', { location: backend.location, volumeId: header.volumeId, size: header.size });
    return header;
  } finally {
    await backend.close();
  }
}

export function defaultCacheDir(volumeId: string): string {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(base, 'bridge', 'store', volumeId);
}

/** Opens a volume as a block device (takes the writer lock unless read-only; replays the local journal). */
export async function openStore(o: OpenStoreOptions): Promise<ChunkStoreDevice> {
  const log = (o.log ?? logger()).child({ component: 'store' });
  const readOnly = o.readOnly ?? false;
  const backend = await openBackend(o);
  let lock: StoreLock | undefined;
  let journal: Journal | undefined;
  let codec: CodecPool | undefined;
  try {
    const header = await readHeader(backend);
    // Before anything changes: a wrong passphrase stops here.
    const keys = await unlock(header, o.passphrase);
    codec = new CodecPool(header, keys, o.codecThreads ?? defaultCodecThreads(), log);
    const manifest = header.version >= 2 && keys ? await Manifest.load(backend, header, keys.manifest) : undefined;
    if (!readOnly) {
      lock = await StoreLock.acquire(backend, { log, ...(o.breakLock ? { breakLock: true } : {}), ...(o.leaseMs ? { leaseMs: o.leaseMs } : {}) });
      // Renewed from here on, also while the journal is replayed.
      lock.startHeartbeat();
    }
    const base = o.cacheDir ?? defaultCacheDir(header.volumeId);
    // A reader gets a private cache of its own, so it never touches a writer's journal.
    const dir = readOnly ? join(base, 'readers', `${process.pid}-${Date.now()}`) : base;
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const opened = await Journal.open(dir, header.volumeId, header.chunkSize);
    journal = opened.journal;
    const store = new ChunkStore(backend, codec, header.chunkSize, log, header.volumeId);
    store.manifest = manifest;
    const warm = lock ? await startSession(backend, dir, header, lock.info.id, opened.pending.size, store) : undefined;
    // No upload or delete once the lease is lost: another writer may own the volume then.
    const held = lock;
    if (held) store.guard = () => held.check();
    if (held && manifest) manifest.guard = store.guard;
    const stopCheckpoints = manifest && lock ? startCheckpoints(manifest, log) : undefined;
    await store.scan();
    const cacheSize = o.cacheSize ?? DEFAULT_CACHE_SIZE;
    const cache = await ChunkCache.open(
      store,
      journal,
      opened.pending,
      dir,
      {
        cacheSize,
        memoryCacheSize: o.memoryCacheSize ?? Math.min(32 * 1024 * 1024, Math.floor(cacheSize / 8)),
        ...(o.uploadConcurrency !== undefined ? { uploadConcurrency: o.uploadConcurrency } : {}),
        ...(o.downloadConcurrency !== undefined ? { downloadConcurrency: o.downloadConcurrency } : {}),
        ...(o.readAhead !== undefined ? { readAhead: o.readAhead } : {}),
        ...(o.writeDelayMs !== undefined ? { writeDelayMs: o.writeDelayMs } : {}),
        ...(lock ? { session: lock.info.id } : {}),
      },
      log,
      warm,
    );
    log.info('volume opened', { location: backend.location, volumeId: header.volumeId, size: header.size, cacheDir: dir, readOnly });
    const pool = codec;
    const session = lock?.info.id;
    return new ChunkStoreDevice(header, backend, store, cache, lock, readOnly, log, {
      beforeRelease: async () => {
        stopCheckpoints?.();
        if (!manifest || !session) return;
        await manifest.checkpoint();
        await writeCacheSession(dir, { session, manifest: manifest.version });
      },
      afterClose: async () => {
        stopCheckpoints?.();
        await pool.close();
        if (readOnly) await fsp.rm(dir, { recursive: true, force: true });
      },
    });
  } catch (e) {
    await codec?.close();
    await journal?.close().catch(() => undefined);
    await lock?.release().catch(() => undefined);
    lock?.stop();
    await backend.close();
    throw e;
  }
}

/**
 * Grows a volume that is not open: checks the passphrase, takes the writer lock, rewrites the
 * header. Shrinking is refused (the chunks past the new end would be lost). An open volume grows
 * with `device.resize(newSize)`.
 */
export async function resizeStore(o: StoreLocationOptions & { passphrase?: string; size: number; breakLock?: boolean }): Promise<VolumeHeader> {
  const log = (o.log ?? logger()).child({ component: 'store' });
  const backend = await openBackend(o);
  try {
    const header = await readHeader(backend);
    await unlock(header, o.passphrase);
    checkGrowth(header, o.size);
    if (o.size === header.size) return header;
    const lock = await StoreLock.acquire(backend, { log, ...(o.breakLock ? { breakLock: true } : {}) });
    try {
      // Read again under the lock: a writer may have grown it meanwhile.
      const current = await readHeader(backend);
      checkGrowth(current, o.size);
      const next = { ...current, size: o.size };
      await backend.put(HEADER_KEY, encodeHeader(next));
      log.info('volume grown', { location: backend.location, volumeId: next.volumeId, from: current.size, size: next.size });
      return next;
    } finally {
      await lock.release();
    }
  } finally {
    await backend.close();
  }
}

/**
 * Starts writer session `session` in cache `dir` (session.ts): refuses a journal that an older
 * session left when another session wrote the volume since (replaying it would overwrite newer
 * data), takes the cache index of the last clean stop when no one wrote since, then records the
 * new session in the cache directory and in the store.
 */
async function startSession(
  backend: ObjectBackend,
  dir: string,
  header: VolumeHeader,
  session: string,
  pending: number,
  store: ChunkStore,
): Promise<IndexedSlot[] | undefined> {
  const writer = await readWriter(backend);
  const mine = await readCacheSession(dir);
  const manifest = store.manifest;
  if (manifest && mine.manifest !== undefined && manifest.version < mine.manifest) {
    throw new BridgeError(
      'EIO',
      `the manifest of volume ${header.volumeId} at ${backend.location} is version ${manifest.version}, older than version ${mine.manifest} ` +
        `that the cache in ${dir} saw: the volume was rolled back to an earlier state. Nothing was changed.`,
    );
  }
  const current = cacheIsCurrent(mine, writer);
  if (pending && mine.session && !current) {
    throw new BridgeError(
      'EBUSY',
      `the cache journal in ${dir} holds ${pending} chunks acknowledged by writer session ${mine.session}, but session ${writer!.session} ` +
        `(pid ${writer!.pid} on ${writer!.host}, ${writer!.since}) wrote the volume since: replaying them would overwrite newer data. ` +
        `Nothing was changed. To discard them, move ${join(dir, 'journal')} away and mount again.`,
    );
  }
  const index = await takeCacheIndex(dir, header.volumeId, header.chunkSize);
  const warm = index && current && writer?.session === index.session ? index.slots : undefined;
  // Generations for this session, reserved (durably) before anything is uploaded.
  if (manifest) store.useGenerations(await manifest.reserve(), () => manifest.reserve());
  const seen = manifest ? { manifest: manifest.version } : {};
  await writeCacheSession(dir, { ...(mine.session ? { session: mine.session } : {}), next: session, ...seen });
  await writeWriter(backend, session);
  await writeCacheSession(dir, { session, ...seen });
  return warm;
}

export interface StoreInfo {
  location: string;
  header: VolumeHeader;
  lock: LockInfo | undefined;
}

/** The volume header and lock holder; needs no passphrase. */
export async function readStoreInfo(o: StoreLocationOptions): Promise<StoreInfo> {
  const backend = await openBackend(o);
  try {
    return { location: backend.location, header: await readHeader(backend), lock: await readLock(backend) };
  } finally {
    await backend.close();
  }
}

export interface FsckReport {
  location: string;
  volumeId: string;
  checked: number;
  storedBytes: number;
  bad: { chunk: number; key: string; error: string }[];
  /** Objects under the chunk prefix that are not chunks of this volume, or lie past its end. */
  stray: string[];
}

/** Reads and authenticates every stored chunk. Read-only: it changes nothing. */
export async function fsckStore(o: StoreLocationOptions & { passphrase?: string; concurrency?: number }): Promise<FsckReport> {
  const log = (o.log ?? logger()).child({ component: 'store' });
  const backend = await openBackend(o);
  try {
    const header = await readHeader(backend);
    const secrets = await unlock(header, o.passphrase);
    const codec = new CodecPool(header, secrets, defaultCodecThreads(), log);
    const manifest = header.version >= 2 && secrets ? await Manifest.load(backend, header, secrets.manifest) : undefined;
    const report: FsckReport = { location: backend.location, volumeId: header.volumeId, checked: 0, storedBytes: 0, bad: [], stray: [] };
    const keys: { key: string; index: number }[] = [];
    const chunks = Math.ceil(header.size / header.chunkSize);
    for await (const obj of backend.list(CHUNK_PREFIX)) {
      const index = chunkIndexOf(obj.key);
      if (index === undefined || index >= chunks) report.stray.push(obj.key);
      else {
        keys.push({ key: obj.key, index });
        report.storedBytes += obj.size;
      }
    }
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < keys.length) {
        const { key, index } = keys[next++]!;
        try {
          const obj = await backend.get(key);
          if (!obj) continue;
          const { gen } = await codec.decode(index, obj, key);
          const want = manifest?.expected(index) ?? 0;
          if (gen < want) throw rolledBack(index, key, gen, want);
        } catch (e) {
          log.error('bad chunk', { chunk: index, key, error: errorMessage(e) });
          report.bad.push({ chunk: index, key, error: errorMessage(e) });
        }
        report.checked++;
      }
    };
    try {
      await Promise.all(Array.from({ length: o.concurrency ?? 8 }, worker));
    } finally {
      await codec.close();
    }
    report.bad.sort((a, b) => a.chunk - b.chunk);
    return report;
  } finally {
    await backend.close();
  }
}

export interface StoreStatsView {
  /** Live figures from a mounted store's stats file (CACHEDIR/stats.json), when one is fresh. */
  mounted: (ChunkStoreStats & { updated: string; pid: number }) | undefined;
  storedObjects: number;
  storedBytes: number;
  compressionRatio: number;
  volumeId: string;
}

/** Stored objects and bytes (by listing), plus the live stats a mount writes into its cache dir. */
export async function storeStats(o: StoreLocationOptions & { cacheDir?: string }): Promise<StoreStatsView> {
  const backend = await openBackend(o);
  try {
    const header = await readHeader(backend);
    let objects = 0;
    let bytes = 0;
    for await (const obj of backend.list(CHUNK_PREFIX)) {
      if (chunkIndexOf(obj.key) === undefined) continue;
      objects++;
      bytes += obj.size;
    }
    let mounted: StoreStatsView['mounted'];
    const file = join(o.cacheDir ?? defaultCacheDir(header.volumeId), STATS_FILE);
    try {
      const st = await fsp.stat(file);
      if (Date.now() - st.mtimeMs < STATS_FRESH_MS) mounted = JSON.parse(await fsp.readFile(file, 'utf8')) as StoreStatsView['mounted'];
    } catch {
      mounted = undefined;
    }
    return {
      volumeId: header.volumeId,
      storedObjects: objects,
      storedBytes: bytes,
      compressionRatio: bytes ? (objects * header.chunkSize) / bytes : 1,
      mounted,
    };
  } finally {
    await backend.close();
  }
}

/** A mounted store writes its stats here every STATS_INTERVAL_MS (see commands/store.ts). */
export const STATS_FILE = 'stats.json';
export const STATS_INTERVAL_MS = 2000;
const STATS_FRESH_MS = 3 * STATS_INTERVAL_MS;
