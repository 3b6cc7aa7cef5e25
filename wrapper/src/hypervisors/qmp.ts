/**
 * A QMP (QEMU Machine Protocol) client: one connection, the capabilities handshake, then commands
 * with arguments, answered in order. Events (lines with "event") are kept for whoever waits on them.
 */
import { connect, type Socket } from 'node:net';
import { BridgeError } from '../../../shared/src/errors.js';

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
}

export class QmpClient {
  private buf = '';
  private readonly pending: Pending[] = [];
  private closedError: Error | undefined;
  readonly events: QmpEvent[] = [];

  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('error', (e) => this.fail(new BridgeError('EIO', `QMP: ${e.message}`)));
    sock.on('close', () => this.fail(new BridgeError('EIO', 'QMP: QEMU closed the connection')));
  }

  /** Connects, reads the greeting and negotiates capabilities. */
  static async connect(socketPath: string, timeoutMs = 3000): Promise<QmpClient> {
    const sock = connect(socketPath);
    const client = new QmpClient(sock);
    const greeting = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new BridgeError('EIO', `QMP ${socketPath}: no greeting within ${timeoutMs} ms`)), timeoutMs);
      client.pending.push({
        command: '(greeting)',
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
        timer,
      });
    });
    try {
      await greeting;
      await client.execute('qmp_capabilities', undefined, timeoutMs);
    } catch (e) {
      client.close();
      throw e instanceof BridgeError ? new BridgeError('EIO', `QMP ${socketPath}: ${e.message}`) : e;
    }
    return client;
  }

  execute(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<unknown> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.pending.findIndex((p) => p.timer === timer);
        if (i >= 0) this.pending.splice(i, 1);
        reject(new BridgeError('EIO', `QMP ${command}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.push({ command, resolve, reject, timer });
      this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    });
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: { QMP?: unknown; return?: unknown; error?: { class?: string; desc: string }; event?: string; data?: Record<string, unknown> };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        this.fail(new BridgeError('EIO', `QMP: not JSON: ${line.slice(0, 200)}`));
        return;
      }
      if (msg.event) {
        this.events.push({ event: msg.event, ...(msg.data ? { data: msg.data } : {}) });
        continue;
      }
      const p = this.pending.shift();
      if (!p) continue;
      clearTimeout(p.timer);
      if (msg.error) p.reject(new BridgeError('EIO', `QMP ${p.command}: ${msg.error.desc}`));
      else p.resolve(msg.QMP !== undefined ? msg.QMP : msg.return);
    }
  }

  private fail(e: Error): void {
    this.closedError ??= e;
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(e);
    }
  }

  close(): void {
    this.closedError ??= new BridgeError('EIO', 'QMP: connection closed');
    this.sock.destroy();
  }
}

/** Sends one QMP command on a fresh connection and resolves on its reply. */
export async function qmpOnce(socketPath: string, command: string, args?: Record<string, unknown>, timeoutMs = 3000): Promise<unknown> {
  const c = await QmpClient.connect(socketPath, timeoutMs);
  try {
    return await c.execute(command, args, timeoutMs);
  } finally {
    c.close();
  }
}
