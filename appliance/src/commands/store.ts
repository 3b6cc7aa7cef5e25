/**
 * `bridge-agent store create|mount|info|fsck|stats`: the chunked, compressed, encrypted online block
 * store (appliance/src/store). `mount` serves MOUNTPOINT/disk.img until SIGTERM, then flushes,
 * uploads everything and unmounts; while mounted it writes live stats to CACHEDIR/stats.json.
 */
import { Command, Option } from 'commander';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import { formatSize } from '../../../shared/src/size.js';
import { logger } from '../../../shared/src/logger.js';
import { BlockFile } from '../fuse/block-file.js';
import { onShutdown, untilShutdown } from '../process/shutdown.js';
import { CIPHERS, COMPRESSIONS, type Cipher, type Compression } from '../store/header.js';
import type { LockInfo } from '../store/lock.js';
import {
  createStore,
  defaultCacheDir,
  fsckStore,
  openStore,
  readStoreInfo,
  resizeStore,
  STATS_FILE,
  STATS_INTERVAL_MS,
  storeStats,
  type StoreLocationOptions,
} from '../store/index.js';
import { action, output, sizeOption } from './common.js';

interface LocationFlags {
  store: string;
  endpoint?: string;
  region?: string;
  json?: boolean;
}
interface PassFlags {
  passphraseFile?: string;
}

const PASS_ENV = 'BRIDGE_STORE_PASSPHRASE';

// libuv's pool size (UV_THREADPOOL_SIZE, 32 recommended: directory uploads are fsync-bound) must come
// from the environment: Node 20 starts the pool while it loads this ES module, before code here runs.

function location(o: LocationFlags): StoreLocationOptions {
  return { store: o.store, ...(o.endpoint ? { endpoint: o.endpoint } : {}), ...(o.region ? { region: o.region } : {}) };
}

/** The passphrase from --passphrase-file (first line) or BRIDGE_STORE_PASSPHRASE; never logged. */
async function passphrase(o: PassFlags): Promise<string | undefined> {
  if (o.passphraseFile) {
    let text: string;
    try {
      text = await fsp.readFile(o.passphraseFile, 'utf8');
    } catch (e) {
      throw new BridgeError('CONFIG', `cannot read --passphrase-file ${o.passphraseFile}: ${errorMessage(e)}`);
    }
    const line = text.split(/\r?\n/)[0] ?? '';
    if (!line) throw new BridgeError('CONFIG', `--passphrase-file ${o.passphraseFile} is empty`);
    return line;
  }
  return process.env[PASS_ENV] || undefined;
}

function locationOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--store <spec>', 'dir:PATH or s3://BUCKET/PREFIX (S3 credentials from the AWS environment/profile chain)')
    .option('--endpoint <url>', 'S3-compatible endpoint URL (path-style addressing)')
    .option('--region <region>', 'S3 region (default $AWS_REGION or us-east-1)');
}

function leaseText(l: LockInfo): string {
  if (!l.leaseMs || !l.renewed) return ' (no lease: break it with mount --break-lock once the holder is gone)';
  const age = Math.max(0, Math.round((Date.now() - Date.parse(l.renewed)) / 1000));
  return `, lease ${Math.round(l.leaseMs / 1000)} s, renewed ${age} s ago (by this host's clock)`;
}

export function register(program: Command): void {
  const store = program.command('store').description('chunked, compressed, encrypted block volumes in S3 or a directory, with a local cache');

  locationOptions(store.command('create').description('create a new (all-zero) volume'))
    .requiredOption('--size <size>', 'volume size, e.g. 10G', sizeOption('--size'))
    .option('--chunk-size <size>', 'chunk size, a power of two from 4K to 4M', sizeOption('--chunk-size'), 128 * 1024)
    .addOption(new Option('--compression <kind>', 'per-chunk compression').choices([...COMPRESSIONS]).default('zstd'))
    .addOption(new Option('--encryption <cipher>', 'per-chunk authenticated encryption').choices([...CIPHERS]).default('aes-256-gcm'))
    .option('--passphrase-file <file>', `file whose first line is the passphrase (or set ${PASS_ENV})`)
    .option('--json', 'print the header as JSON')
    .action(
      action(async (o: LocationFlags & PassFlags & { size: number; chunkSize: number; compression: Compression; encryption: Cipher }) => {
        const pass = o.encryption === 'none' ? undefined : await passphrase(o);
        const header = await createStore({
          ...location(o),
          size: o.size,
          chunkSize: o.chunkSize,
          compression: o.compression,
          cipher: o.encryption,
          ...(pass !== undefined ? { passphrase: pass } : {}),
        });
        output(
          o.json ?? false,
          header,
          () =>
            `created volume ${header.volumeId} at ${o.store}: ${formatSize(header.size)}, ${formatSize(header.chunkSize)} chunks, ${header.compression}, ${header.cipher}`,
        );
      }),
    );

  locationOptions(store.command('mount').description('serve the volume as MOUNTPOINT/disk.img through FUSE until SIGINT/SIGTERM'))
    .option('--passphrase-file <file>', `file whose first line is the passphrase (or set ${PASS_ENV})`)
    .option('--cache-dir <dir>', 'local cache directory (default ~/.cache/bridge/store/VOLUMEID)')
    .option('--cache-size <size>', 'hard limit of the cache directory (default 512M)', sizeOption('--cache-size'))
    .option('--memory-cache-size <size>', 'memory tier size (default min(32M, cache size / 8))', sizeOption('--memory-cache-size'))
    .option('--upload-concurrency <n>', 'parallel uploads (default 32)', (v) => Number.parseInt(v, 10))
    .option('--download-concurrency <n>', 'parallel downloads (default 16)', (v) => Number.parseInt(v, 10))
    .option('--codec-threads <n>', 'worker threads for compression and encryption (default: one per core, at most 4; 0: none)', (v) => Number.parseInt(v, 10))
    .option('--read-only', 'refuse writes (takes no lock)')
    .option('--break-lock', 'remove a stale writer lock left by a process that is gone')
    .option('--json', 'print the served file as JSON once ready')
    .argument('<mountpoint>', 'directory to mount on (created when missing)')
    .addHelpText(
      'after',
      `
fsync on MOUNTPOINT/disk.img returns once every earlier write is in the store or in the cache's
journal (fdatasync'ed, replayed on the next mount). SIGTERM uploads everything, then unmounts.
Live stats: bridge-agent store stats --store ... (read from CACHEDIR/${STATS_FILE}).`,
    )
    .action(
      action(
        async (
          mountpoint: string,
          o: LocationFlags &
            PassFlags & {
              cacheDir?: string;
              cacheSize?: number;
              memoryCacheSize?: number;
              uploadConcurrency?: number;
              downloadConcurrency?: number;
              codecThreads?: number;
              readOnly?: boolean;
              breakLock?: boolean;
            },
        ) => {
          const pass = await passphrase(o);
          const device = await openStore({
            ...location(o),
            ...(pass !== undefined ? { passphrase: pass } : {}),
            ...(o.cacheDir ? { cacheDir: o.cacheDir } : {}),
            ...(o.cacheSize !== undefined ? { cacheSize: o.cacheSize } : {}),
            ...(o.memoryCacheSize !== undefined ? { memoryCacheSize: o.memoryCacheSize } : {}),
            ...(o.uploadConcurrency ? { uploadConcurrency: o.uploadConcurrency } : {}),
            ...(o.downloadConcurrency ? { downloadConcurrency: o.downloadConcurrency } : {}),
            ...(o.codecThreads !== undefined && Number.isInteger(o.codecThreads) && o.codecThreads >= 0 ? { codecThreads: o.codecThreads } : {}),
            readOnly: o.readOnly ?? false,
            breakLock: o.breakLock ?? false,
          });
          const cacheDir = o.cacheDir ?? defaultCacheDir(device.volumeId);
          let file: BlockFile;
          try {
            file = await BlockFile.expose(device, mountpoint, { readOnly: o.readOnly ?? false, fsname: `bridge-store-${device.volumeId.slice(0, 8)}` });
          } catch (e) {
            await device.close();
            throw e;
          }
          // Live stats for `store stats`: rewritten atomically every STATS_INTERVAL_MS while mounted.
          const statsPath = join(cacheDir, STATS_FILE);
          const writeStats = async (): Promise<void> => {
            const tmp = statsPath + '.tmp';
            await fsp.writeFile(tmp, JSON.stringify({ ...device.stats(), updated: new Date().toISOString(), pid: process.pid }, null, 2));
            await fsp.rename(tmp, statsPath);
          };
          const log = logger().child({ component: 'store' });
          const timer = setInterval(
            () => void writeStats().catch((e: unknown) => log.debug('stats file not written', { error: errorMessage(e) })),
            STATS_INTERVAL_MS,
          );
          await writeStats().catch(() => undefined);
          onShutdown(
            'unmount store',
            async () => {
              clearInterval(timer);
              await file.close();
              await fsp.rm(statsPath, { force: true });
            },
            file.mountpoint,
          );
          output(
            o.json ?? false,
            { file: file.path, size: device.size, volumeId: device.volumeId, cacheDir, writable: !o.readOnly },
            () => `serving ${file.path} (${formatSize(device.size)}, volume ${device.volumeId}); stop with Ctrl-C or SIGTERM`,
          );
          await untilShutdown();
        },
      ),
    );

  locationOptions(store.command('info').description('show the volume header and the writer lock (no passphrase needed)'))
    .option('--json', 'print as JSON')
    .action(
      action(async (o: LocationFlags) => {
        const info = await readStoreInfo(location(o));
        const h = info.header;
        output(o.json ?? false, info, () =>
          [
            `location:    ${info.location}`,
            `volume id:   ${h.volumeId}`,
            `format:      ${h.format} v${h.version}`,
            `size:        ${formatSize(h.size)} (${h.size} bytes)`,
            `chunk size:  ${formatSize(h.chunkSize)}`,
            `compression: ${h.compression}${h.compression === 'none' ? '' : ` (level ${h.compressionLevel})`}`,
            `cipher:      ${h.cipher}`,
            ...(h.kdf ? [`kdf:         scrypt N=${h.kdf.N} r=${h.kdf.r} p=${h.kdf.p}`] : []),
            `created:     ${h.created}`,
            `lock:        ${info.lock ? `held by pid ${info.lock.pid} on ${info.lock.host} since ${info.lock.since}${leaseText(info.lock)}` : 'free'}`,
          ].join('\n'),
        );
      }),
    );

  locationOptions(store.command('resize').description('grow a volume that is not mounted (shrinking is refused)'))
    .requiredOption('--size <size>', 'new volume size, e.g. 200G (not smaller than now)', sizeOption('--size'))
    .option('--passphrase-file <file>', `file whose first line is the passphrase (or set ${PASS_ENV})`)
    .option('--break-lock', 'remove a stale writer lock left by a process that is gone')
    .option('--json', 'print the new header as JSON')
    .action(
      action(async (o: LocationFlags & PassFlags & { size: number; breakLock?: boolean }) => {
        const pass = await passphrase(o);
        const before = await readStoreInfo(location(o));
        const header = await resizeStore({
          ...location(o),
          size: o.size,
          ...(pass !== undefined ? { passphrase: pass } : {}),
          ...(o.breakLock ? { breakLock: true } : {}),
        });
        output(o.json ?? false, header, () =>
          header.size === before.header.size
            ? `volume ${header.volumeId} is already ${formatSize(header.size)}; nothing changed`
            : `volume ${header.volumeId} grown from ${formatSize(before.header.size)} to ${formatSize(header.size)}`,
        );
      }),
    );

  locationOptions(store.command('fsck').description('read and authenticate every stored chunk; exit 1 when any is bad'))
    .option('--passphrase-file <file>', `file whose first line is the passphrase (or set ${PASS_ENV})`)
    .option('--json', 'print the report as JSON')
    .action(
      action(async (o: LocationFlags & PassFlags) => {
        const pass = await passphrase(o);
        const r = await fsckStore({ ...location(o), ...(pass !== undefined ? { passphrase: pass } : {}) });
        output(o.json ?? false, r, () =>
          [
            `checked ${r.checked} chunks (${formatSize(r.storedBytes)} stored): ${r.bad.length} bad, ${r.stray.length} stray objects`,
            ...r.bad.map((b) => `bad chunk ${b.chunk} (${b.key}): ${b.error}`),
            ...r.stray.map((k) => `stray object ${k}`),
          ].join('\n'),
        );
        if (r.bad.length) process.exitCode = 1;
      }),
    );

  locationOptions(store.command('stats').description('stored objects and bytes, compression ratio, and live cache figures of a mounted store'))
    .option('--cache-dir <dir>', "the mount's cache directory (default ~/.cache/bridge/store/VOLUMEID)")
    .option('--json', 'print as JSON')
    .action(
      action(async (o: LocationFlags & { cacheDir?: string }) => {
        const s = await storeStats({ ...location(o), ...(o.cacheDir ? { cacheDir: o.cacheDir } : {}) });
        output(o.json ?? false, s, () => {
          const lines = [`stored: ${s.storedObjects} objects, ${formatSize(s.storedBytes)}, compression ratio ${s.compressionRatio.toFixed(2)}`];
          const m = s.mounted;
          if (!m) lines.push('not mounted (no fresh stats file in the cache directory)');
          else
            lines.push(
              `mounted by pid ${m.pid} (updated ${m.updated})`,
              `cache: ${formatSize(m.cacheBytes)} of ${formatSize(m.cacheLimit)} on disk, ${formatSize(m.memoryBytes)} of ${formatSize(m.memoryLimit)} in memory`,
              `hits: ${m.memoryHits} memory, ${m.diskHits} disk; misses: ${m.misses}`,
              `dirty: ${m.dirtyChunks} chunks (${formatSize(m.dirtyBytes)}); uploads in flight: ${m.uploadsInFlight}; downloads in flight: ${m.downloadsInFlight}; upload failures: ${m.uploadFailures}`,
            );
          return lines.join('\n');
        });
      }),
    );
}
