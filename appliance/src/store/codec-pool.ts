/**
 * The chunk codec on worker threads: zstd and AES-GCM of whole chunks cost ~0.1-0.2 ms each, on the
 * thread that also answers FUSE. A pool of workers (codec-worker.ts) runs them on the other cores;
 * each request goes to the least busy worker, its input is copied (or moved) in, the result is moved
 * back. Chunks under 32 KiB, a pool of size 0, and a pool whose worker died, use the codec inline.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { BridgeError, type ErrorCode } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { ChunkCodec } from './codec.js';
import type { Keys, VolumeHeader } from './header.js';

/**
 * What ChunkStore needs from a codec. Each result carries the CRC-32 of the chunk's plaintext
 * (computed off the main thread): the cache keeps it to verify its slots after a restart.
 */
export interface Codec {
  /** The object for a chunk at write generation `gen` (null: all zeros, not stored). */
  encode(index: number, plain: Uint8Array, gen: number): Promise<{ obj: Buffer | null; crc: number }>;
  /** A stored chunk's plaintext and generation; EIO naming the chunk when it fails authentication or decoding. */
  decode(index: number, obj: Buffer, key: string): Promise<{ plain: Buffer; crc: number; gen: number }>;
}

export interface CodecWorkerData {
  header: VolumeHeader;
  key: Uint8Array | undefined;
}

export type CodecRequest =
  { id: number; op: 'encode'; index: number; gen: number; data: Uint8Array } | { id: number; op: 'decode'; index: number; key: string; data: Uint8Array };

export type CodecReply =
  | { id: number; data: Uint8Array | null; crc: number; gen: number; spare?: Uint8Array; error?: undefined }
  | { id: number; data?: undefined; spare?: undefined; error: { code: ErrorCode; message: string; details: Record<string, unknown> } };

const MIN_POOLED_CHUNK = 32 * 1024;

interface Slot {
  worker: Worker;
  busy: number;
}

/**
 * Built (dist/): codec-worker.js. From sources (tsx, vitest) the worker is a .ts file: a worker does
 * not inherit the parent's loader hooks, so it registers tsx's before importing it.
 */
function spawnWorker(workerData: CodecWorkerData): Worker {
  if (!import.meta.url.endsWith('.ts')) return new Worker(fileURLToPath(new URL('./codec-worker.js', import.meta.url)), { workerData });
  const req = createRequire(import.meta.url);
  const tsx = req.resolve('tsx/cjs/api');
  const entry = fileURLToPath(new URL('./codec-worker.ts', import.meta.url));
  const boot = `require(${JSON.stringify(tsx)}).register(); require(${JSON.stringify(entry)});`;
  return new Worker(boot, { eval: true, workerData });
}

export class CodecPool implements Codec {
  private readonly inline: ChunkCodec;
  private readonly workers: Slot[] = [];
  private readonly pending = new Map<
    number,
    { resolve: (r: { data: Buffer | null; crc: number; gen: number }) => void; reject: (e: Error) => void; slot: Slot }
  >();
  private nextId = 1;
  private broken = false;
  /** Encode inputs the workers handed back, reused for the next copies. */
  private readonly spares: Buffer[] = [];

  constructor(
    header: VolumeHeader,
    keys: Keys | undefined,
    threads: number,
    private readonly log: Logger,
  ) {
    this.inline = new ChunkCodec(header, keys);
    if (header.chunkSize < MIN_POOLED_CHUNK) threads = 0;
    const data: CodecWorkerData = { header, key: keys?.data };
    for (let i = 0; i < threads; i++) {
      const worker = spawnWorker(data);
      const slot: Slot = { worker, busy: 0 };
      worker.on('message', (r: CodecReply) => this.settle(r));
      worker.on('error', (e) => this.fail(e));
      worker.on('exit', (code) => this.fail(new Error(`codec worker exited with code ${code}`)));
      // Idle workers must not keep the process alive.
      worker.unref();
      this.workers.push(slot);
    }
  }

  /** Worker threads in use (0: inline). */
  get threads(): number {
    return this.broken ? 0 : this.workers.length;
  }

  async encode(index: number, plain: Uint8Array, gen: number): Promise<{ obj: Buffer | null; crc: number }> {
    // The caller's buffer may change once we return (it is the cache's live copy): send a copy.
    const r = await this.run(
      index,
      () => ({ op: 'encode', index, gen, data: this.copyOf(plain) }),
      async () => {
        const copy = Buffer.from(plain);
        return { data: await this.inline.encode(index, copy, gen), crc: crc32(copy), gen };
      },
    );
    return { obj: r.data, crc: r.crc };
  }

  async decode(index: number, obj: Buffer, key: string): Promise<{ plain: Buffer; crc: number; gen: number }> {
    const r = await this.run(
      index,
      () => ({ op: 'decode', index, key, data: obj }),
      async () => {
        const d = await this.inline.decode(index, obj, key);
        return { data: d.plain, crc: crc32(d.plain), gen: d.gen };
      },
    );
    return { plain: r.data!, crc: r.crc, gen: r.gen };
  }

  async close(): Promise<void> {
    const ws = this.workers.splice(0);
    this.broken = true;
    await Promise.all(ws.map((s) => s.worker.terminate()));
  }

  private run(
    index: number,
    request: () => Omit<CodecRequest, 'id'>,
    inline: () => Promise<{ data: Buffer | null; crc: number; gen: number }>,
  ): Promise<{ data: Buffer | null; crc: number; gen: number }> {
    const slot = this.pick();
    if (!slot) return inline();
    const id = this.nextId++;
    const req = { ...request(), id } as CodecRequest;
    const buf = req.data;
    // Move the input when it owns its memory (a download); else it is copied.
    const movable = buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength && req.op === 'decode' ? [buf.buffer as ArrayBuffer] : [];
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, slot });
      slot.busy++;
      if (slot.busy === 1) slot.worker.ref();
      try {
        slot.worker.postMessage(req, req.op === 'encode' ? [buf.buffer as ArrayBuffer] : movable);
      } catch (e) {
        this.pending.delete(id);
        this.release(slot);
        reject(new BridgeError('EIO', `chunk ${index}: cannot hand the chunk to a codec worker: ${(e as Error).message}`));
      }
    });
  }

  private pick(): Slot | undefined {
    if (this.broken || this.workers.length === 0) return undefined;
    let best = this.workers[0]!;
    for (const s of this.workers) if (s.busy < best.busy) best = s;
    return best;
  }

  private release(slot: Slot): void {
    slot.busy--;
    if (slot.busy === 0) slot.worker.unref();
  }

  /** A copy that owns its memory (transferable), not zero-filled, from the spares when one fits. */
  private copyOf(b: Uint8Array): Buffer {
    let c = this.spares.pop();
    if (!c || c.byteLength !== b.byteLength) c = Buffer.allocUnsafeSlow(b.byteLength);
    c.set(b);
    return c;
  }

  private settle(r: CodecReply): void {
    if (r.spare && this.spares.length < 32) this.spares.push(Buffer.from(r.spare.buffer, r.spare.byteOffset, r.spare.byteLength));
    const p = this.pending.get(r.id);
    if (!p) return;
    this.pending.delete(r.id);
    this.release(p.slot);
    if (r.error) p.reject(new BridgeError(r.error.code, r.error.message, r.error.details));
    else p.resolve({ data: r.data ? Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength) : null, crc: r.crc, gen: r.gen });
  }

  /** A worker that dies fails its requests with EIO; later requests run inline. */
  private fail(e: Error): void {
    if (this.broken) return;
    this.broken = true;
    this.log.error('codec worker failed; chunks are encoded and decoded on the main thread from now on', { error: e.message });
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(new BridgeError('EIO', `codec worker failed: ${e.message}`));
    }
    void Promise.all(this.workers.splice(0).map((s) => s.worker.terminate()));
  }
}
