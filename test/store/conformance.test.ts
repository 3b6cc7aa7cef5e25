/** The block-device conformance suite over the chunk store, on both backends. */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isBridgeError } from '../../shared/src/errors.js';
import { createStore, openBackend, openStore, readStoreInfo } from '../../appliance/src/store/index.js';
import { blockDeviceConformance } from '../conformance/block-device.js';
import { quietLogs, startS3rver, tempDir, TEST_KDF, type S3Server } from './helpers.js';

quietLogs();
const SIZE = 64 * 1024 * 1024 + 12345; // a partial last chunk
const CHUNK = 128 * 1024;
const pass = 'correct horse battery staple';

let dir = '';
blockDeviceConformance('chunk store (directory, zstd + aes-256-gcm)', {
  open: async () => {
    dir = tempDir('store-conf');
    await createStore({ store: `dir:${join(dir, 'store')}`, size: SIZE, chunkSize: CHUNK, passphrase: pass, kdf: TEST_KDF });
    // A small cache so that eviction and write-back run during the suite.
    return openStore({
      store: `dir:${join(dir, 'store')}`,
      passphrase: pass,
      cacheDir: join(dir, 'cache'),
      cacheSize: 3 * 1024 * 1024,
      memoryCacheSize: 512 * 1024,
    });
  },
  reopen: () => openStore({ store: `dir:${join(dir, 'store')}`, passphrase: pass, cacheDir: join(dir, 'cache'), cacheSize: 3 * 1024 * 1024 }),
  cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  boundaries: [CHUNK],
});

let s3: S3Server;
let n = 0;
let prefix = '';
let cacheDir = '';
beforeAll(async () => {
  s3 = await startS3rver(['conformance']);
});
afterAll(async () => {
  await s3?.stop();
});
blockDeviceConformance('chunk store (S3 via s3rver, 64K chunks, no encryption)', {
  open: async () => {
    prefix = `s3://conformance/vol${n++}`;
    cacheDir = tempDir('store-s3cache');
    await createStore({ store: prefix, endpoint: s3.endpoint, size: SIZE, chunkSize: 64 * 1024, cipher: 'none' });
    return openStore({ store: prefix, endpoint: s3.endpoint, cacheDir, cacheSize: 4 * 1024 * 1024 });
  },
  reopen: () => openStore({ store: prefix, endpoint: s3.endpoint, cacheDir, cacheSize: 4 * 1024 * 1024 }),
  cleanup: async () => rmSync(cacheDir, { recursive: true, force: true }),
  boundaries: [64 * 1024],
});

describe('writer lock on S3 (s3rver)', () => {
  it('knows s3rver ignores conditional PUT, and of two writers racing for a fresh volume exactly one wins', async () => {
    const store = 's3://conformance/race';
    await createStore({ store, endpoint: s3.endpoint, size: 8 * 1024 * 1024, cipher: 'none' });
    const backend = await openBackend({ store, endpoint: s3.endpoint });
    try {
      // s3rver stores the second `If-None-Match: *` PUT instead of answering 412.
      expect(await backend.atomicCreate!()).toBe(false);
    } finally {
      await backend.close();
    }
    const dirs = [tempDir('store-race-a'), tempDir('store-race-b')];
    try {
      const opens = await Promise.allSettled(dirs.map((cacheDir) => openStore({ store, endpoint: s3.endpoint, cacheDir, cacheSize: 4 * 1024 * 1024 })));
      const won = opens.filter((r) => r.status === 'fulfilled');
      expect(won).toHaveLength(1);
      const lost = opens.find((r) => r.status === 'rejected') as PromiseRejectedResult;
      expect(isBridgeError(lost.reason, 'EBUSY')).toBe(true);
      const dev = won[0]!.value;
      expect((await readStoreInfo({ store, endpoint: s3.endpoint })).lock?.pid).toBe(process.pid);
      await dev.write(Buffer.alloc(4096, 1), 0);
      await dev.close();
      expect((await readStoreInfo({ store, endpoint: s3.endpoint })).lock).toBeUndefined();
    } finally {
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    }
  });
});

describe('S3 listing (s3rver)', () => {
  it('lists more than one page of chunks (1100 objects) at open', async () => {
    const store = 's3://conformance/many';
    const cacheDir = tempDir('store-many');
    try {
      await createStore({ store, endpoint: s3.endpoint, size: 8 * 1024 * 1024, chunkSize: 4096, cipher: 'none', compression: 'none' });
      let dev = await openStore({ store, endpoint: s3.endpoint, cacheDir, cacheSize: 16 * 1024 * 1024, codecThreads: 0 });
      const chunk = Buffer.alloc(4096);
      for (let i = 0; i < 1100; i++) {
        chunk.writeUInt32LE(i + 1, 0);
        await dev.write(chunk, i * 4096);
      }
      await dev.close();
      dev = await openStore({ store, endpoint: s3.endpoint, cacheDir: cacheDir + '-cold', cacheSize: 16 * 1024 * 1024, codecThreads: 0 });
      expect(dev.stats().storedObjects).toBe(1100);
      const got = Buffer.alloc(4096);
      await dev.read(got, 1099 * 4096);
      expect(got.readUInt32LE(0)).toBe(1100);
      await dev.close();
    } finally {
      rmSync(cacheDir, { recursive: true, force: true });
      rmSync(cacheDir + '-cold', { recursive: true, force: true });
    }
  });
});
