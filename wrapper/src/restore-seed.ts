/**
 * The host's side of a restored VM's seed line (appliance/src/guest/restore.ts): on the socket behind
 * the guest's second serial port, before any network connection, `seed <64 random bytes, hex> <now,
 * ms>`; the guest reseeds its kernel RNG and OpenSSL, sets its clock, makes a new SSH host key and
 * answers `ok <sha256 hex of the new host key>` (pinned for every SSH connection after) or `error ...`.
 */
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { BridgeError } from '../../shared/src/errors.js';

export const SEED_BYTES = 64;

export function seedLine(entropy: Buffer = randomBytes(SEED_BYTES), nowMs = Date.now()): string {
  return `seed ${entropy.toString('hex')} ${nowMs}\n`;
}

/** The guest's answer: the new host key's fingerprint, or its error. */
export function parseSeedReply(line: string): string {
  const ok = /^ok ([0-9a-f]{64})$/.exec(line.trim());
  if (ok) return ok[1]!;
  const err = /^error (.*)$/.exec(line.trim());
  throw new BridgeError(
    'EIO',
    err ? `the restored VM could not apply its seed: ${err[1]}` : `unexpected answer on the seed line: ${JSON.stringify(line.slice(0, 80))}`,
  );
}

function connectOnce(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Sends the seed and waits for the answer; returns the new host key's SHA-256 (hex). */
export async function sendRestoreSeed(socketPath: string, timeoutMs = 30_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let sock: Socket | undefined;
  while (!sock) {
    try {
      sock = await connectOnce(socketPath);
    } catch (e) {
      if (Date.now() > deadline) throw new BridgeError('EIO', `seed socket ${socketPath}: ${(e as Error).message}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  const s = sock;
  try {
    return await new Promise<string>((resolve, reject) => {
      let buf = '';
      const timer = setTimeout(
        () => reject(new BridgeError('EIO', `the restored VM did not answer its seed within ${timeoutMs / 1000} s`)),
        Math.max(1, deadline - Date.now()),
      );
      s.setEncoding('latin1');
      s.on('data', (d: string) => {
        buf += d;
        let nl: number;
        while ((nl = buf.search(/[\r\n]/)) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line.trim()) continue;
          clearTimeout(timer);
          try {
            resolve(parseSeedReply(line));
          } catch (e) {
            reject(e);
          }
          return;
        }
      });
      s.on('error', (e) => {
        clearTimeout(timer);
        reject(new BridgeError('EIO', `seed socket: ${e.message}`));
      });
      s.on('close', () => {
        clearTimeout(timer);
        reject(new BridgeError('EIO', 'the seed socket closed before the VM answered'));
      });
      s.write(seedLine());
    });
  } finally {
    s.destroy();
  }
}
