/**
 * A small NBD client as a BlockDevice, so the block-device conformance suite can run through the
 * NBD protocol (this machine's kernel has no nbd module). Written from the protocol document, apart
 * from the server: fixed newstyle, NBD_OPT_GO, simple or structured replies, concurrent requests
 * matched by handle. Range checks happen here first, as every BlockDevice does; what the server
 * answers to bad requests is checked with libnbd's nbdsh in nbd.test.ts.
 */
import { connect, type Socket } from 'node:net';
import { checkIo, Lifecycle, type BlockCapabilities, type BlockDevice } from '../../appliance/src/block/device.js';
import { BridgeError, type ErrorCode } from '../../shared/src/errors.js';

const IHAVEOPT = 0x49484156454f5054n;
const OPT_GO = 7;
const OPT_STRUCTURED_REPLY = 8;
const REP_ACK = 1;
const REP_INFO = 3;
const CMD = { read: 0, write: 1, disc: 2, flush: 3, trim: 4, zero: 6 } as const;
const ERRNO_CODE: Record<number, ErrorCode> = { 1: 'EROFS', 5: 'EIO', 22: 'EINVAL', 28: 'ERANGE', 95: 'ENOTSUP' };

interface Pending {
  resolve: () => void;
  reject: (e: Error) => void;
  target?: Uint8Array;
  offset: number;
}

/** Reads exactly n bytes at a time from a socket in paused mode. */
class Reader {
  private waiting: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private error: Error | undefined;
  constructor(private readonly socket: Socket) {
    socket.on('readable', () => this.pump());
    const fail = (e: Error): void => {
      this.error = e;
      this.waiting?.reject(e);
      this.waiting = undefined;
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('NBD connection closed')));
  }
  read(n: number): Promise<Buffer> {
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      this.waiting = { n, resolve, reject };
      this.pump();
    });
  }
  private pump(): void {
    const w = this.waiting;
    if (!w) return;
    const b = (w.n === 0 ? Buffer.alloc(0) : this.socket.read(w.n)) as Buffer | null;
    if (!b) return;
    this.waiting = undefined;
    w.resolve(b);
  }
}

export class NbdClientDevice implements BlockDevice {
  readonly blockSize = 4096;
  readonly capabilities: BlockCapabilities;
  private readonly life = new Lifecycle();
  private readonly pending = new Map<bigint, Pending>();
  private nextHandle = 1n;

  private constructor(
    private readonly socket: Socket,
    private readonly reader: Reader,
    readonly size: number,
    readonly flags: number,
    readonly structured: boolean,
  ) {
    this.capabilities = { writable: (flags & 2) === 0, trim: false, persistent: true, resizable: false };
    void this.receive();
  }

  static async connect(socketPath: string, options: { structured?: boolean; exportName?: string } = {}): Promise<NbdClientDevice> {
    const socket = connect(socketPath);
    await new Promise<void>((res, rej) => socket.once('connect', res).once('error', rej));
    const reader = new Reader(socket);
    const hello = await reader.read(18);
    if (hello.readBigUInt64BE(0) !== 0x4e42444d41474943n || hello.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('not an NBD newstyle server');
    const cflags = Buffer.alloc(4);
    cflags.writeUInt32BE(3); // fixed newstyle, no zeroes
    socket.write(cflags);
    const option = async (opt: number, data: Buffer): Promise<{ type: number; data: Buffer }[]> => {
      const h = Buffer.alloc(16);
      h.writeBigUInt64BE(IHAVEOPT, 0);
      h.writeUInt32BE(opt, 8);
      h.writeUInt32BE(data.length, 12);
      socket.write(Buffer.concat([h, data]));
      const replies: { type: number; data: Buffer }[] = [];
      for (;;) {
        const r = await reader.read(20);
        const type = r.readUInt32BE(12);
        const body = await reader.read(r.readUInt32BE(16));
        replies.push({ type, data: body });
        if (type === REP_ACK || type >= 0x80000000) return replies;
      }
    };
    const structured = options.structured ?? false;
    if (structured) {
      const r = await option(OPT_STRUCTURED_REPLY, Buffer.alloc(0));
      if (r.at(-1)!.type !== REP_ACK) throw new Error('server refused structured replies');
    }
    const name = Buffer.from(options.exportName ?? '', 'utf8');
    const go = Buffer.alloc(4 + name.length + 2);
    go.writeUInt32BE(name.length, 0);
    name.copy(go, 4);
    const replies = await option(OPT_GO, go);
    const last = replies.at(-1)!;
    if (last.type !== REP_ACK) throw new BridgeError('ENOENT', `NBD_OPT_GO refused: ${last.data.toString()}`);
    const info = replies.find((r) => r.type === REP_INFO && r.data.readUInt16BE(0) === 0);
    if (!info) throw new Error('no NBD_INFO_EXPORT in the reply to NBD_OPT_GO');
    return new NbdClientDevice(socket, reader, Number(info.data.readBigUInt64BE(2)), info.data.readUInt16BE(10), structured);
  }

  private async receive(): Promise<void> {
    try {
      for (;;) {
        const magic = (await this.reader.read(4)).readUInt32BE(0);
        if (magic === 0x67446698) {
          const rest = await this.reader.read(12);
          const error = rest.readUInt32BE(0);
          const p = this.take(rest.readBigUInt64BE(4));
          if (error) p.reject(this.failure(error, ''));
          else {
            if (p.target) (await this.reader.read(p.target.length)).copy(p.target);
            p.resolve();
          }
        } else if (magic === 0x668e33ef) {
          const rest = await this.reader.read(16);
          const flags = rest.readUInt16BE(0);
          const type = rest.readUInt16BE(2);
          const handle = rest.readBigUInt64BE(4);
          const payload = await this.reader.read(rest.readUInt32BE(12));
          const p = this.pending.get(handle);
          if (!p) throw new Error(`reply for unknown handle ${handle}`);
          if (type === 1 || type === 2) {
            // OFFSET_DATA / OFFSET_HOLE at an absolute offset inside the request.
            const at = Number(payload.readBigUInt64BE(0)) - p.offset;
            if (type === 1) payload.copy(p.target!, at, 8);
            else p.target!.fill(0, at, at + payload.readUInt32BE(8));
          } else if (type >= 0x8000) {
            this.pending.delete(handle);
            p.reject(this.failure(payload.readUInt32BE(0), payload.toString('utf8', 6, 6 + payload.readUInt16BE(4))));
            continue;
          }
          if (flags & 1) {
            this.pending.delete(handle);
            p.resolve();
          }
        } else throw new Error(`bad reply magic 0x${magic.toString(16)}`);
      }
    } catch (e) {
      for (const p of this.pending.values()) p.reject(e as Error);
      this.pending.clear();
    }
  }

  private take(handle: bigint): Pending {
    const p = this.pending.get(handle);
    if (!p) throw new Error(`reply for unknown handle ${handle}`);
    this.pending.delete(handle);
    return p;
  }

  private failure(errno: number, message: string): BridgeError {
    return new BridgeError(ERRNO_CODE[errno] ?? 'EIO', `NBD error ${errno}${message ? `: ${message}` : ''}`, { errno });
  }

  private request(cmd: number, offset: number, length: number, data?: Uint8Array, target?: Uint8Array): Promise<void> {
    const handle = this.nextHandle++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(cmd, 6);
    h.writeBigUInt64BE(handle, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    return new Promise((resolve, reject) => {
      this.pending.set(handle, { resolve, reject, offset, ...(target ? { target } : {}) });
      this.socket.write(h);
      if (data) this.socket.write(data);
    });
  }

  async read(target: Uint8Array, offset: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, target.length, false)) return;
    await this.request(CMD.read, offset, target.length, undefined, target);
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, data.length, true)) return;
    await this.request(CMD.write, offset, data.length, data);
  }

  async flush(): Promise<void> {
    this.life.check();
    await this.request(CMD.flush, 0, 0);
  }

  async trim(offset: number, length: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, length, true)) return;
    await this.request(CMD.trim, offset, length);
  }

  async zero(offset: number, length: number): Promise<void> {
    this.life.check();
    if (!checkIo(this, offset, length, true)) return;
    await this.request(CMD.zero, offset, length);
  }

  /** Sends NBD_CMD_DISC and waits for the server to close the connection. */
  async close(): Promise<void> {
    if (!this.life.close()) return;
    const closed = new Promise<void>((res) => this.socket.once('close', () => res()));
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(CMD.disc, 6);
    this.socket.write(h);
    await closed;
  }
}
