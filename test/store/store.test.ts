/**
 * Behaviour of the chunk store beyond the conformance suite: header and passphrase, writer lock,
 * zero chunks, corruption, faults between client and store, journal replay, the cache limit, growth.
 */
import { execFileSync } from 'node:child_process';
import { promises as fsp, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isBridgeError } from '../../shared/src/errors.js';
import { chunkKey, transientError, type ObjectBackend, type ObjectInfo } from '../../appliance/src/store/backend.js';
import {
  createStore,
  fsckStore,
  openStore,
  readStoreInfo,
  resizeStore,
  type ChunkStoreDevice,
  type OpenStoreOptions,
} from '../../appliance/src/store/index.js';
import { Rng } from '../helpers/random.js';
import { quietLogs, tempDir, TEST_KDF } from './helpers.js';

quietLogs();
const MiB = 1024 * 1024;
const CHUNK = 128 * 1024;
const pass = 'passphrase for tests';
let dir = '';
const open: ChunkStoreDevice[] = [];

afterEach(async () => {
  for (const d of open.splice(0)) await d.close().catch(() => undefined);
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = '';
});

async function fresh(o: { size?: number; cipher?: 'none' } = {}): Promise<string> {
  dir = tempDir('store');
  const store = `dir:${join(dir, 'store')}`;
  await createStore({ store, size: o.size ?? 32 * MiB, chunkSize: CHUNK, passphrase: pass, kdf: TEST_KDF, ...(o.cipher ? { cipher: o.cipher } : {}) });
  return store;
}

async function openDev(store: string, extra: Partial<OpenStoreOptions> = {}): Promise<ChunkStoreDevice> {
  const d = await openStore({ store, passphrase: pass, cacheDir: join(dir, 'cache'), cacheSize: 8 * MiB, ...extra });
  open.push(d);
  return d;
}

async function errorOf(p: Promise<unknown>): Promise<{ code?: string; message: string }> {
  try {
    await p;
  } catch (e) {
    return { code: isBridgeError(e) ? e.code : undefined, message: (e as Error).message };
  }
  throw new Error('expected an error');
}

async function readBack(d: ChunkStoreDevice, off: number, len: number): Promise<Buffer> {
  const b = Buffer.alloc(len);
  await d.read(b, off);
  return b;
}

function storeFiles(store: string): string[] {
  const root = store.slice(4);
  return execFileSync('find', [root, '-type', 'f'], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

/** A backend wrapper that fails, delays or blocks operations on purpose. */
class FaultyBackend implements ObjectBackend {
  failRate = 0;
  maxDelayMs = 0;
  blockPuts = false;
  failAll = false;
  failures = 0;
  private readonly rng = new Rng(7);
  constructor(private readonly inner: ObjectBackend) {}
  get location(): string {
    return this.inner.location;
  }
  private async fault(op: string): Promise<void> {
    if (this.maxDelayMs) await new Promise((r) => setTimeout(r, this.rng.int(0, this.maxDelayMs)));
    if (this.failAll || this.rng.next() < this.failRate) {
      this.failures++;
      throw transientError(`injected fault in ${op} (connection reset)`);
    }
  }
  async get(key: string): Promise<Buffer | undefined> {
    await this.fault('get');
    return this.inner.get(key);
  }
  async put(key: string, data: Uint8Array): Promise<void> {
    while (this.blockPuts && key.startsWith('c/')) await new Promise((r) => setTimeout(r, 20));
    await this.fault('put');
    await this.inner.put(key, data);
    // Fail after the object landed too: the client must cope with "stored but no answer".
    if (this.rng.next() < this.failRate / 2) throw transientError('injected fault after put');
  }
  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    return this.inner.putIfAbsent(key, data);
  }
  async delete(key: string): Promise<void> {
    await this.fault('delete');
    return this.inner.delete(key);
  }
  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

describe('chunk store', () => {
  it('refuses a wrong passphrase and changes nothing; info needs none', async () => {
    const store = await fresh();
    const before = storeFiles(store).sort();
    const err = await errorOf(openStore({ store, passphrase: 'wrong', cacheDir: join(dir, 'cache') }));
    expect(err.code).toBe('EACCES');
    expect(err.message).toMatch(/wrong passphrase/);
    expect(storeFiles(store).sort()).toEqual(before);
    const noPass = await errorOf(openStore({ store, cacheDir: join(dir, 'cache') }));
    expect(noPass.code).toBe('CONFIG');
    const info = await readStoreInfo({ store });
    expect(info.header).toMatchObject({ size: 32 * MiB, chunkSize: CHUNK, compression: 'zstd', cipher: 'aes-256-gcm', kdf: { name: 'scrypt', N: 1024 } });
    expect(info.lock).toBeUndefined();
    expect(await errorOf(createStore({ store, size: MiB, cipher: 'none' }))).toMatchObject({ code: 'EBUSY' });
  });

  it('admits one writer; a stale lock is broken on request', async () => {
    const store = await fresh();
    const a = await openDev(store);
    const second = await errorOf(openStore({ store, passphrase: pass, cacheDir: join(dir, 'cache2') }));
    expect(second.code).toBe('EBUSY');
    expect(second.message).toMatch(/locked by pid \d+.*--break-lock/);
    // Readers take no lock.
    const r = await openDev(store, { readOnly: true, cacheDir: join(dir, 'cache-ro') });
    await r.close();
    const b = await openDev(store, { breakLock: true, cacheDir: join(dir, 'cache2') });
    expect((await readStoreInfo({ store })).lock?.pid).toBe(process.pid);
    await b.close();
    await a.close().catch(() => undefined);
  });

  it('holds the lock as a lease: a live holder keeps it, an expired one is taken over, a writer that lost it stops', async () => {
    const store = await fresh();
    const root = store.slice(4);
    const lease = 600;
    // A lock left by a killed process: its last renewal is long past.
    const dead = { id: 'dead', host: 'elsewhere', pid: 999999, since: new Date(Date.now() - 60_000).toISOString(), leaseMs: lease, beat: 7 };
    await fsp.writeFile(join(root, 'lock.json'), JSON.stringify({ ...dead, renewed: new Date(Date.now() - 30_000).toISOString() }));
    const a = await openDev(store, { leaseMs: lease });
    const mine = (await readStoreInfo({ store })).lock!;
    expect(mine).toMatchObject({ pid: process.pid, leaseMs: lease });
    expect(mine.id).not.toBe('dead');
    // A live holder: refused at once, naming the holder and its renewal.
    const live = await errorOf(openStore({ store, passphrase: pass, cacheDir: join(dir, 'cache2'), leaseMs: lease }));
    expect(live).toMatchObject({ code: 'EBUSY', message: expect.stringMatching(/locked by pid \d+ .*renewed its lease \d+ s ago/) });
    // Its clock looks far behind ours, but it keeps renewing: watching its heartbeat keeps it safe.
    await fsp.writeFile(join(root, 'lock.json'), JSON.stringify({ ...mine, renewed: new Date(Date.now() - 60_000).toISOString() }));
    const skew = await errorOf(openStore({ store, passphrase: pass, cacheDir: join(dir, 'cache2'), leaseMs: lease }));
    expect(skew).toMatchObject({ code: 'EBUSY', message: expect.stringMatching(/lease is being renewed/) });
    await a.write(Buffer.alloc(CHUNK, 1), 0);
    await a.flush();
    // Broken by another writer: the heartbeat notices, and the first writer refuses further writes.
    const b = await openDev(store, { breakLock: true, cacheDir: join(dir, 'cache2'), leaseMs: lease });
    await new Promise((r) => setTimeout(r, lease));
    expect(await errorOf(a.write(Buffer.alloc(10), 0))).toMatchObject({ code: 'EIO', message: expect.stringMatching(/lock .* was taken over/) });
    expect((await errorOf(a.flush())).code).toBe('EIO');
    await b.write(Buffer.alloc(10, 2), 0);
    await b.close();
    expect((await readStoreInfo({ store })).lock).toBeUndefined();
  });

  it('stores no zero chunks, compresses, deletes chunks overwritten with zeros or trimmed', async () => {
    const store = await fresh();
    const d = await openDev(store);
    const text = Buffer.alloc(4 * CHUNK, 'all work and no play makes jack a dull boy. ');
    await d.write(text, 0);
    await d.write(Buffer.alloc(CHUNK), 8 * CHUNK); // zeros over nothing
    await d.drain();
    let s = d.stats();
    expect(s.storedObjects).toBe(4);
    expect(s.compressionRatio).toBeGreaterThan(20);
    expect(storeFiles(store).filter((f) => f.includes('/c/'))).toHaveLength(4);
    await d.write(Buffer.alloc(CHUNK), 0); // zeros over a stored chunk delete it
    await d.trim(CHUNK, 2 * CHUNK);
    await d.zero(3 * CHUNK + 10, 100); // partial: stays stored
    await d.drain();
    s = d.stats();
    expect(s.storedObjects).toBe(1);
    const want = Buffer.alloc(4 * CHUNK);
    text.copy(want, 3 * CHUNK, 3 * CHUNK);
    want.fill(0, 3 * CHUNK + 10, 3 * CHUNK + 110);
    expect((await readBack(d, 0, 4 * CHUNK)).equals(want)).toBe(true);
  });

  it('gives EIO for a corrupt, moved or foreign chunk only, and fsck names it', async () => {
    const store = await fresh();
    const rng = new Rng(1);
    const data = rng.bytes(6 * CHUNK);
    let d = await openDev(store);
    await d.write(data, 0);
    await d.close();
    const root = store.slice(4);
    // Flip one byte of chunk 2; replace chunk 4 by chunk 3's object (moved/swapped).
    const p2 = join(root, chunkKey(2));
    const obj = await fsp.readFile(p2);
    obj[obj.length >> 1] = obj[obj.length >> 1]! ^ 0x01;
    await fsp.writeFile(p2, obj);
    await fsp.copyFile(join(root, chunkKey(3)), join(root, chunkKey(4)));
    d = await openDev(store, { cacheDir: join(dir, 'cache-cold') }); // the warm cache would serve its own good copies;
    expect(await errorOf(readBack(d, 2 * CHUNK + 100, 10))).toMatchObject({ code: 'EIO', message: expect.stringMatching(/chunk 2 .*authentication failed/) });
    expect((await errorOf(readBack(d, 4 * CHUNK, CHUNK))).code).toBe('EIO');
    expect(await errorOf(readBack(d, CHUNK, 3 * CHUNK))).toMatchObject({ code: 'EIO' }); // spans chunk 2
    // Everything else reads fine.
    for (const i of [0, 1, 3, 5]) expect((await readBack(d, i * CHUNK, CHUNK)).equals(data.subarray(i * CHUNK, (i + 1) * CHUNK))).toBe(true);
    await d.close();
    const report = await fsckStore({ store, passphrase: pass });
    expect(report.checked).toBe(6);
    expect(report.bad.map((b) => b.chunk)).toEqual([2, 4]);
  });

  it('detects a chunk replayed from another volume', async () => {
    const store = await fresh();
    const otherDir = tempDir('store-other');
    try {
      const other = `dir:${join(otherDir, 'store')}`;
      await createStore({ store: other, size: 32 * MiB, chunkSize: CHUNK, passphrase: pass, kdf: TEST_KDF });
      const o = await openStore({ store: other, passphrase: pass, cacheDir: join(otherDir, 'cache') });
      await o.write(Buffer.alloc(CHUNK, 7), 0);
      await o.close();
      const d = await openDev(store);
      await d.write(Buffer.alloc(CHUNK, 9), 0);
      await d.close();
      await fsp.copyFile(join(otherDir, 'store', chunkKey(0)), join(store.slice(4), chunkKey(0)));
      const again = await openDev(store, { cacheDir: join(dir, 'cache-cold') });
      expect((await errorOf(readBack(again, 0, 1))).code).toBe('EIO');
    } finally {
      rmSync(otherDir, { recursive: true, force: true });
    }
  });

  it('detects a chunk rolled back to an older version of itself, and a rolled-back manifest', async () => {
    const store = await fresh();
    const root = store.slice(4);
    const rng = new Rng(31);
    const v1 = rng.bytes(2 * CHUNK);
    let d = await openDev(store);
    await d.write(v1, 0);
    await d.close();
    const old0 = await fsp.readFile(join(root, chunkKey(0)));
    const oldManifest = await fsp.readFile(join(root, 'manifest'));
    const v2 = rng.bytes(CHUNK);
    d = await openDev(store);
    await d.write(v2, 0);
    await d.close();
    // The store owner puts chunk 0's older (validly encrypted) object back.
    await fsp.writeFile(join(root, chunkKey(0)), old0);
    d = await openDev(store, { cacheDir: join(dir, 'cache-cold') });
    expect(await errorOf(readBack(d, 0, 10))).toMatchObject({
      code: 'EIO',
      message: expect.stringMatching(/chunk 0 .* rolled back: .*generation \d+, older than \d+/),
    });
    expect((await readBack(d, CHUNK, CHUNK)).equals(v1.subarray(CHUNK))).toBe(true);
    await d.close();
    const report = await fsckStore({ store, passphrase: pass });
    expect(report.bad).toMatchObject([{ chunk: 0, error: expect.stringMatching(/rolled back/) }]);
    // The whole volume put back to the earlier state (manifest and chunk): a cache that saw the newer one refuses it.
    await fsp.writeFile(join(root, 'manifest'), oldManifest);
    expect(await errorOf(openStore({ store, passphrase: pass, cacheDir: join(dir, 'cache'), cacheSize: 8 * MiB }))).toMatchObject({
      code: 'EIO',
      message: expect.stringMatching(/manifest .* is version \d+, older than version \d+ .* rolled back/),
    });
    // A changed manifest fails authentication.
    const forged = Buffer.from(oldManifest);
    forged[forged.length - 40] = forged[forged.length - 40]! ^ 1;
    await fsp.writeFile(join(root, 'manifest'), forged);
    expect(await errorOf(openStore({ store, passphrase: pass, cacheDir: join(dir, 'cache-x'), cacheSize: 8 * MiB }))).toMatchObject({
      code: 'EIO',
      message: expect.stringMatching(/manifest .* failed authentication/),
    });
  });

  it('still opens volumes of format 1 (no generations, no manifest)', async () => {
    const store = await fresh();
    const root = store.slice(4);
    const h = JSON.parse(await fsp.readFile(join(root, 'header.json'), 'utf8')) as { version: number };
    await fsp.writeFile(join(root, 'header.json'), JSON.stringify({ ...h, version: 1 }));
    const data = new Rng(32).bytes(3 * CHUNK);
    let d = await openDev(store);
    await d.write(data, 0);
    await d.close();
    expect(storeFiles(store).some((f) => f.endsWith('/manifest'))).toBe(false);
    expect((await fsp.readFile(join(root, chunkKey(1))))[0]).toBe(1);
    d = await openDev(store, { cacheDir: join(dir, 'cache-cold') });
    expect((await readBack(d, 0, data.length)).equals(data)).toBe(true);
  });

  it('loses nothing under injected store errors and delays', async () => {
    const store = await fresh({ size: 48 * MiB });
    let faulty: FaultyBackend | undefined;
    const wrapBackend = (b: ObjectBackend): ObjectBackend => (faulty = new FaultyBackend(b));
    const retry = { attempts: 10, baseDelayMs: 5, maxDelayMs: 50 };
    const d = await openDev(store, { wrapBackend, retry, cacheSize: 4 * MiB, readAhead: 4 });
    faulty!.failRate = 0.2;
    faulty!.maxDelayMs = 15;
    const rng = new Rng(3);
    const model = Buffer.alloc(48 * MiB);
    for (let i = 0; i < 120; i++) {
      const len = rng.int(1, 3 * CHUNK);
      const off = rng.int(0, model.length - len);
      const data = rng.bytes(len);
      await d.write(data, off);
      data.copy(model, off);
      if (i % 40 === 39) await d.flush();
    }
    expect((await readBack(d, 0, model.length)).equals(model)).toBe(true);
    await d.close();
    expect(faulty!.failures).toBeGreaterThan(10);
    const again = await openDev(store, { wrapBackend, retry });
    faulty!.failRate = 0.2;
    expect((await readBack(again, 0, model.length)).equals(model)).toBe(true);
  });

  it('on persistent store failure gives EIO, keeps dirty data, and uploads it once the store is back', async () => {
    const store = await fresh();
    let faulty: FaultyBackend | undefined;
    const d = await openDev(store, {
      wrapBackend: (b) => (faulty = new FaultyBackend(b)),
      retry: { attempts: 2, baseDelayMs: 1 },
      cacheSize: 2 * MiB,
      writeDelayMs: 0,
    });
    faulty!.failAll = true;
    const data = new Rng(5).bytes(4 * MiB);
    // The cache holds < 2 MiB: writing 4 MiB must end in EIO once the store keeps failing, never hang.
    const err = await errorOf(d.write(data, 0));
    expect(err.code).toBe('EIO');
    await d.flush(); // what was written is journaled
    expect((await errorOf(d.drain())).code).toBe('EIO');
    faulty!.failAll = false;
    await d.drain();
    await d.write(data, 0);
    await d.close();
    const again = await openDev(store);
    expect((await readBack(again, 0, data.length)).equals(data)).toBe(true);
  });

  it('replays the journal: a flushed write survives losing the process before any upload', async () => {
    const store = await fresh();
    let faulty: FaultyBackend | undefined;
    const d = await openDev(store, { wrapBackend: (b) => (faulty = new FaultyBackend(b)) });
    faulty!.blockPuts = true; // uploads never finish: only the journal holds the data
    const rng = new Rng(9);
    const a = rng.bytes(3 * CHUNK + 1000);
    const b = rng.bytes(5000);
    await d.write(a, 10_000);
    await d.zero(0, 5000);
    await d.write(b, 20 * CHUNK - 100);
    await d.flush();
    await d.write(rng.bytes(CHUNK), 30 * CHUNK); // not flushed: may be lost
    open.splice(open.indexOf(d), 1); // abandon it like a killed process (lock and journal stay)
    expect(storeFiles(store).filter((f) => f.includes('/c/'))).toHaveLength(0);
    const again = await openDev(store, { breakLock: true });
    const want = Buffer.alloc(21 * CHUNK);
    a.copy(want, 10_000);
    want.fill(0, 0, 5000);
    b.copy(want, 20 * CHUNK - 100);
    expect((await readBack(again, 0, want.length)).equals(want)).toBe(true);
    faulty!.blockPuts = false;
  });

  it('reuses the cache of a clean stop after checking it, unless another writer changed the volume since', async () => {
    const store = await fresh();
    const gets = { n: 0 };
    const counting = (b: ObjectBackend): ObjectBackend => {
      const f = new FaultyBackend(b);
      const get = f.get.bind(f);
      f.get = (key: string) => {
        if (key.startsWith('c/')) gets.n++;
        return get(key);
      };
      return f;
    };
    const data = new Rng(21).bytes(32 * CHUNK);
    let d = await openDev(store);
    await d.write(data, 0);
    await d.close();
    // Warm: every chunk comes from the slot file, none from the store.
    d = await openDev(store, { wrapBackend: counting });
    expect((await readBack(d, 0, data.length)).equals(data)).toBe(true);
    expect(gets.n).toBe(0);
    await d.close();
    // A damaged slot fails its check and is fetched again; the others are still reused.
    const slots = join(dir, 'cache', 'slots');
    const raw = await fsp.readFile(slots);
    raw[5 * CHUNK + 77] = raw[5 * CHUNK + 77]! ^ 0xff;
    await fsp.writeFile(slots, raw);
    d = await openDev(store, { wrapBackend: counting });
    expect((await readBack(d, 0, data.length)).equals(data)).toBe(true);
    expect(gets.n).toBe(1);
    await d.close();
    // Another writer (its own cache) changes chunk 3: the first cache must not serve its old copy.
    const other = await openDev(store, { cacheDir: join(dir, 'cache-other') });
    const fresh3 = new Rng(22).bytes(CHUNK);
    await other.write(fresh3, 3 * CHUNK);
    await other.close();
    gets.n = 0;
    d = await openDev(store, { wrapBackend: counting });
    const want = Buffer.from(data);
    fresh3.copy(want, 3 * CHUNK);
    expect((await readBack(d, 0, data.length)).equals(want)).toBe(true);
    expect(gets.n).toBe(32); // cold: everything fetched again
    await d.close();
    // A smaller limit reuses only what fits, and the directory stays under it.
    d = await openDev(store, { cacheSize: 2 * MiB, wrapBackend: counting });
    const du = Number(execFileSync('du', ['-sb', '--apparent-size', join(dir, 'cache')], { encoding: 'utf8' }).split('\t')[0]);
    expect(du).toBeLessThanOrEqual(2 * MiB);
    gets.n = 0;
    expect((await readBack(d, 0, data.length)).equals(want)).toBe(true);
    expect(gets.n).toBeGreaterThan(0);
    expect(gets.n).toBeLessThan(32);
  });

  it('refuses to replay a journal when another writer session wrote the volume since', async () => {
    const store = await fresh();
    let faulty: FaultyBackend | undefined;
    const a = await openDev(store, { wrapBackend: (b) => (faulty = new FaultyBackend(b)) });
    faulty!.blockPuts = true; // acknowledged by flush, never uploaded
    await a.write(Buffer.alloc(CHUNK, 1), 0);
    await a.flush();
    open.splice(open.indexOf(a), 1); // a killed process: lock, journal and slot file stay
    const b = await openDev(store, { breakLock: true, cacheDir: join(dir, 'cache-b') });
    await b.write(Buffer.alloc(CHUNK, 2), 0);
    await b.close();
    const err = await errorOf(openStore({ store, passphrase: pass, cacheDir: join(dir, 'cache'), cacheSize: 8 * MiB, breakLock: true }));
    expect(err).toMatchObject({ code: 'EBUSY', message: expect.stringMatching(/journal .* holds 1 chunks .* overwrite newer data/) });
    const c = await openDev(store, { cacheDir: join(dir, 'cache-c') });
    expect((await readBack(c, 0, CHUNK)).equals(Buffer.alloc(CHUNK, 2))).toBe(true);
    faulty!.blockPuts = false;
  });

  it('never lets the cache exceed its limit (32 MiB cache, 512 MiB written)', async () => {
    const store = await fresh({ size: 600 * MiB, cipher: 'none' });
    const limit = 32 * MiB;
    const d = await openDev(store, { cacheSize: limit, memoryCacheSize: 4 * MiB });
    const cacheDir = join(dir, 'cache');
    let maxDisk = 0;
    let maxMem = 0;
    const measure = (): void => {
      const du = Number(execFileSync('du', ['-sb', '--apparent-size', cacheDir], { encoding: 'utf8' }).split('\t')[0]);
      const used = Number(execFileSync('du', ['-sB1', cacheDir], { encoding: 'utf8' }).split('\t')[0]);
      maxDisk = Math.max(maxDisk, du, used);
      maxMem = Math.max(maxMem, d.stats().memoryBytes);
    };
    const rng = new Rng(11);
    const block = rng.bytes(4 * MiB); // compressible enough, never zero
    for (let i = 0; i < 128; i++) {
      block.writeUInt32LE(i, 0);
      await d.write(block, i * 4 * MiB);
      if (i % 8 === 0) measure();
      if (i % 32 === 31) await d.flush();
    }
    measure();
    const s = d.stats();
    expect(s.cacheBytes).toBeLessThanOrEqual(limit);
    expect(maxDisk).toBeLessThanOrEqual(limit);
    expect(maxMem).toBeLessThanOrEqual(4 * MiB);
    // Shrink it live, then check reads of evicted data.
    await d.setCacheLimit(16 * MiB);
    measure();
    expect(maxDisk).toBeLessThanOrEqual(limit);
    expect(d.stats().cacheBytes).toBeLessThanOrEqual(16 * MiB);
    const got = await readBack(d, 5 * 4 * MiB, 4 * MiB);
    block.writeUInt32LE(5, 0);
    expect(got.equals(block)).toBe(true);
  });

  it('grows a volume', async () => {
    const store = await fresh({ size: 4 * MiB + 100 });
    const d = await openDev(store);
    await d.write(Buffer.alloc(100, 1), 4 * MiB);
    await d.resize(10 * MiB);
    expect(d.size).toBe(10 * MiB);
    expect((await readBack(d, 4 * MiB + 100, 1000)).every((x) => x === 0)).toBe(true);
    await d.write(Buffer.alloc(10, 2), 10 * MiB - 10);
    await expect(d.resize(MiB)).rejects.toThrow(/shrink/);
    await d.close();
    const again = await openDev(store);
    expect(again.size).toBe(10 * MiB);
    expect((await readBack(again, 10 * MiB - 10, 10)).equals(Buffer.alloc(10, 2))).toBe(true);
    expect((await readBack(again, 4 * MiB, 100)).equals(Buffer.alloc(100, 1))).toBe(true);
    // resizeStore: the same for a volume that is not open; it needs the writer lock and the passphrase.
    expect(await errorOf(resizeStore({ store, passphrase: pass, size: 16 * MiB }))).toMatchObject({ code: 'EBUSY' });
    await again.close();
    expect(await errorOf(resizeStore({ store, passphrase: pass, size: 9 * MiB }))).toMatchObject({
      code: 'EINVAL',
      message: expect.stringMatching(/refusing to shrink .* from 10485760 to 9437184 bytes/),
    });
    expect(await errorOf(resizeStore({ store, passphrase: 'wrong', size: 16 * MiB }))).toMatchObject({ code: 'EACCES' });
    expect((await resizeStore({ store, passphrase: pass, size: 16 * MiB })).size).toBe(16 * MiB);
    expect((await readStoreInfo({ store })).lock).toBeUndefined();
    const third = await openDev(store);
    expect(third.size).toBe(16 * MiB);
    expect((await readBack(third, 10 * MiB - 10, 10)).equals(Buffer.alloc(10, 2))).toBe(true);
  });
});
