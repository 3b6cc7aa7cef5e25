/**
 * A codec worker thread (see codec-pool.ts): runs ChunkCodec.encode/decode for the main thread and
 * hands results back by transfer. The volume key arrives in workerData (memory only, never logged).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
import { isBridgeError, errorMessage } from '../../../shared/src/errors.js';
import { ChunkCodec } from './codec.js';
import type { CodecReply, CodecRequest, CodecWorkerData } from './codec-pool.js';

const data = workerData as CodecWorkerData;
const codec = new ChunkCodec(data.header, data.key ? { data: Buffer.from(data.key) } : undefined);
const port = parentPort!;

const owns = (b: Uint8Array): boolean => b.byteOffset === 0 && b.byteLength === b.buffer.byteLength;

/**
 * Transfers the result's memory when it owns all of it (otherwise the reply copies it), and hands
 * an encode's input back for the main thread to reuse (fewer chunk-sized allocations to collect).
 */
function send(reply: CodecReply, b: Buffer | null, spare: Buffer | undefined): void {
  const move: ArrayBuffer[] = [];
  if (spare && owns(spare) && spare.buffer !== b?.buffer) {
    reply.spare = spare;
    move.push(spare.buffer as ArrayBuffer);
  }
  if (b && owns(b)) {
    try {
      port.postMessage(reply, [...move, b.buffer as ArrayBuffer]);
      return;
    } catch {
      // Memory that cannot move (a native library's buffer): copied below.
    }
  }
  port.postMessage(reply, move);
}

port.on('message', (req: CodecRequest) => {
  const input = Buffer.from(req.data.buffer, req.data.byteOffset, req.data.byteLength);
  // In a promise chain, so that nothing a request does can throw out of the handler and end the worker.
  const run = Promise.resolve().then(() =>
    req.op === 'encode'
      ? codec.encode(req.index, input, req.gen).then((out) => ({ out, crc: crc32(input), gen: req.gen }))
      : codec.decode(req.index, input, req.key).then((d) => ({ out: d.plain, crc: crc32(d.plain), gen: d.gen })),
  );
  run.then(
    ({ out, crc, gen }) => send({ id: req.id, data: out, crc, gen }, out, req.op === 'encode' ? input : undefined),
    (e: unknown) =>
      port.postMessage({
        id: req.id,
        error: { code: isBridgeError(e) ? e.code : 'EIO', message: errorMessage(e), details: isBridgeError(e) ? e.details : {} },
      } satisfies CodecReply),
  );
});
