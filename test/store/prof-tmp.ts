import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { createStore, openStore } from '../../appliance/src/store/index.js';
import { tempDir } from './helpers.js';
const dir = tempDir('prof');
const store = `dir:${join(dir, 'store')}`;
const size = 256 << 20;
await createStore({ store, size, chunkSize: 128 << 10, passphrase: 'x', kdf: { N: 1024, r: 8, p: 1 } });
const d = await openStore({ store, passphrase: 'x', cacheDir: join(dir, 'cache'), cacheSize: 1 << 30, uploadConcurrency: Number(process.env.UC ?? 16) });
const data = randomBytes(size);
const t0 = performance.now();
const inflight: Promise<void>[] = [];
for (let off = 0; off < size; off += 128 << 10) {
  inflight.push(d.write(data.subarray(off, off + (128 << 10)), off));
  if (inflight.length >= 4) await inflight.shift();
}
await Promise.all(inflight);
const t1 = performance.now();
await d.flush();
const t2 = performance.now();
await d.close();
const t3 = performance.now();
console.log({ write: t1 - t0, flush: t2 - t1, drainClose: t3 - t2, total: t3 - t0 });
