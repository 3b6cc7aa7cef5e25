/**
 * The control socket: newline-delimited JSON requests and responses (shared/src/protocol.ts) over
 * RUNTIME/control.sock, mode 0600 in a 0700 directory, so only root (the SSH session of the host
 * wrapper) can talk to the agent. Requests carrying secrets are never logged.
 */
import { createConnection, createServer, type Server } from 'node:net';
import { promises as fsp } from 'node:fs';
import { BridgeError, errorMessage, type ErrorCode } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { controlResult, MAX_FRAME, type ControlRequest, type ControlResponse } from '../../../shared/src/protocol.js';

/** A request as a client writes it (the id is added here). */
export type ControlCall = ControlRequest extends infer T ? (T extends unknown ? Omit<T, 'id'> : never) : never;

export type ControlHandler = (req: ControlRequest) => Promise<unknown>;

export async function listenControl(socketPath: string, handler: ControlHandler, log: Logger): Promise<Server> {
  await fsp.rm(socketPath, { force: true });
  const server = createServer((sock) => {
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('error', () => undefined);
    sock.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > MAX_FRAME && !buf.includes('\n')) {
        sock.end(JSON.stringify({ id: 0, ok: false, error: { code: 'EINVAL', message: 'request too large' } }) + '\n');
        return;
      }
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        void answer(line).then((res) => sock.write(JSON.stringify(res) + '\n'));
      }
    });
  });
  const answer = async (line: string): Promise<ControlResponse> => {
    let req: ControlRequest;
    try {
      req = JSON.parse(line) as ControlRequest;
      if (typeof req !== 'object' || req === null || typeof req.method !== 'string') throw new Error('not a request');
    } catch {
      return { id: 0, ok: false, error: { code: 'EINVAL', message: 'malformed request: expected one JSON object per line' } };
    }
    log.debug('control request', { method: req.method });
    try {
      return { id: req.id, ok: true, result: await handler(req) };
    } catch (e) {
      const code: ErrorCode | 'ERROR' = e instanceof BridgeError ? e.code : 'ERROR';
      return { id: req.id, ok: false, error: { code, message: errorMessage(e) } };
    }
  };
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // umask for the bind, then chmod: the socket is never reachable by others, not even briefly.
    const old = process.umask(0o177);
    server.listen(socketPath, () => {
      process.umask(old);
      resolve();
    });
  });
  await fsp.chmod(socketPath, 0o600);
  return server;
}

/** Sends one request and waits for its response; throws the agent's error as a BridgeError. */
export function controlRequest(socketPath: string, req: ControlCall, timeoutMs = 120_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(socketPath);
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new BridgeError('EIO', `the agent did not answer "${req.method}" within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(JSON.stringify({ id: 1, ...req }) + '\n'));
    sock.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const missing = e.code === 'ENOENT' || e.code === 'ECONNREFUSED';
      reject(
        new BridgeError(
          missing ? 'ENOENT' : 'EIO',
          missing ? `no agent is running (no socket at ${socketPath})` : `cannot reach the agent at ${socketPath}: ${e.message}`,
        ),
      );
    });
    sock.on('data', (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      sock.end();
      try {
        resolve(controlResult(buf.slice(0, nl)));
      } catch (err) {
        reject(err);
      }
    });
  });
}
