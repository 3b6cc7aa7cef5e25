/**
 * One NBD client connection: fixed newstyle handshake, option haggling (GO, INFO, LIST, ABORT,
 * EXPORT_NAME, STRUCTURED_REPLY, LIST/SET_META_CONTEXT for base:allocation), then the transmission
 * phase over a BlockDevice. Requests run concurrently (the device allows it) and are answered as they
 * complete, each reply written with one socket write so replies never interleave.
 *
 * Input is read with `socket.read(n)` in paused mode: the stream buffers partial messages for us and
 * hands out exactly the bytes each state needs.
 */
import type { Socket } from 'node:net';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import type { BlockDevice, Extent } from '../block/device.js';
import { BufferPool } from './buffers.js';
import * as P from './protocol.js';

export interface NbdExport {
  /** Export name clients ask for; '' (the default export) always matches too. */
  name: string;
  description: string;
  device: BlockDevice;
  /** Refuse writes even when the device takes them. */
  readOnly: boolean;
}

type State =
  | { kind: 'clientFlags' }
  | { kind: 'optionHeader' }
  | { kind: 'optionData'; option: number; length: number }
  | { kind: 'request' }
  | { kind: 'payload'; header: Buffer }
  | { kind: 'discard'; remaining: number; header: Buffer }
  | { kind: 'done' };

/** Requests in flight per connection before we stop reading more (the client's queue waits in the socket). */
const MAX_IN_FLIGHT = 16;
/** Reply bytes queued in the socket before we stop reading requests. */
const MAX_QUEUED = 4 * 1024 * 1024;
/** Extents per block-status reply at most (a reply may cover less than asked). */
const MAX_EXTENTS = 4096;
const KNOWN_CMD_FLAGS = P.CMD_FLAG_FUA | P.CMD_FLAG_NO_HOLE | P.CMD_FLAG_DF | P.CMD_FLAG_REQ_ONE;

export class NbdConnection {
  private state: State = { kind: 'clientFlags' };
  private noZeroes = false;
  private structured = false;
  private metaContext = false;
  private inFlight = 0;
  private stopping = false;
  private readonly closed: Promise<void>;

  constructor(
    private readonly socket: Socket,
    private readonly exp: NbdExport,
    private readonly pool: BufferPool,
    private readonly log: Logger,
  ) {
    this.closed = new Promise((res) => socket.once('close', () => res()));
    socket.setNoDelay?.(true);
    socket.on('error', (e) => this.log.debug('connection error', { error: e.message }));
    socket.on('readable', () => this.pump());
    socket.on('drain', () => this.pump());
    socket.on('end', () => {
      this.stopping = true;
      this.finish();
    });
    // Greeting: NBDMAGIC, IHAVEOPT, handshake flags.
    const hello = Buffer.allocUnsafe(18);
    hello.writeBigUInt64BE(P.NBDMAGIC, 0);
    hello.writeBigUInt64BE(P.IHAVEOPT, 8);
    hello.writeUInt16BE(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES, 16);
    socket.write(hello);
  }

  /** Stops reading requests, lets those in flight finish, then closes. */
  close(): Promise<void> {
    this.stopping = true;
    this.finish();
    return this.closed;
  }

  private get writable(): boolean {
    return this.exp.device.capabilities.writable && !this.exp.readOnly;
  }

  private transmissionFlags(): number {
    // Every BlockDevice's flush covers all completed writes and no connection has a private cache,
    // so several connections to one device see each other's writes: multi-conn is safe.
    let f = P.TF_HAS_FLAGS | P.TF_SEND_FLUSH | P.TF_CAN_MULTI_CONN;
    if (this.writable) f |= P.TF_SEND_FUA | P.TF_SEND_TRIM | P.TF_SEND_WRITE_ZEROES;
    else f |= P.TF_READ_ONLY;
    if (this.structured) f |= P.TF_SEND_DF;
    return f;
  }

  /** Bytes the current state waits for. */
  private need(): number {
    const s = this.state;
    switch (s.kind) {
      case 'clientFlags':
        return 4;
      case 'optionHeader':
        return 16;
      case 'optionData':
        return s.length;
      case 'request':
        return P.REQUEST_HEADER;
      case 'payload':
        return s.header.readUInt32BE(24);
      default:
        return 0;
    }
  }

  private pump(): void {
    while (!this.stopping && this.state.kind !== 'done') {
      if (this.state.kind === 'request' && (this.inFlight >= MAX_IN_FLIGHT || this.socket.writableLength > MAX_QUEUED)) return;
      if (this.state.kind === 'discard') {
        const chunk = this.socket.read() as Buffer | null;
        if (!chunk) return;
        this.discard(chunk);
        continue;
      }
      const n = this.need();
      const data = n === 0 ? Buffer.alloc(0) : (this.socket.read(n) as Buffer | null);
      if (!data) return;
      try {
        this.step(data);
      } catch (e) {
        // Protocol violations end the connection (a hard disconnect, as the specification allows).
        this.log.warn('NBD client broke the protocol; disconnecting', { error: errorMessage(e) });
        this.hardDisconnect();
      }
    }
  }

  private step(data: Buffer): void {
    const s = this.state;
    switch (s.kind) {
      case 'clientFlags': {
        const flags = data.readUInt32BE(0);
        if (flags & ~(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES)) throw new BridgeError('EINVAL', `unknown client flags 0x${flags.toString(16)}`);
        this.noZeroes = (flags & P.FLAG_C_NO_ZEROES) !== 0;
        this.state = { kind: 'optionHeader' };
        return;
      }
      case 'optionHeader': {
        if (data.readBigUInt64BE(0) !== P.IHAVEOPT) throw new BridgeError('EINVAL', 'bad option magic');
        const option = data.readUInt32BE(8);
        const length = data.readUInt32BE(12);
        if (length > P.MAX_OPTION) throw new BridgeError('EINVAL', `option ${option} carries ${length} bytes`);
        this.state = { kind: 'optionData', option, length };
        return;
      }
      case 'optionData':
        this.state = { kind: 'optionHeader' };
        this.option(s.option, data);
        return;
      case 'request':
        this.request(data);
        return;
      case 'payload':
        this.state = { kind: 'request' };
        this.run(s.header, data);
        return;
      default:
        return;
    }
  }

  // ---- option haggling ----

  private reply(option: number, type: number, data?: Uint8Array): void {
    this.socket.write(P.optionReply(option, type, data));
  }

  private error(option: number, type: P.Rep, message: string): void {
    this.log.debug('NBD option refused', { option, message });
    this.reply(option, type, Buffer.from(message, 'utf8'));
  }

  private knownName(name: string): boolean {
    return name === '' || name === this.exp.name;
  }

  private option(option: number, data: Buffer): void {
    switch (option) {
      case P.Opt.ExportName: {
        const name = data.toString('utf8');
        // This option cannot fail politely: an unknown name ends the session.
        if (!this.knownName(name)) throw new BridgeError('ENOENT', `client asked for unknown export "${name}"`);
        const b = Buffer.alloc(this.noZeroes ? 10 : 134);
        b.writeBigUInt64BE(BigInt(this.exp.device.size), 0);
        b.writeUInt16BE(this.transmissionFlags(), 8);
        this.socket.write(b);
        this.enterTransmission();
        return;
      }
      case P.Opt.Abort:
        this.reply(option, P.Rep.Ack);
        this.state = { kind: 'done' };
        this.socket.end();
        return;
      case P.Opt.List: {
        if (data.length) return this.error(option, P.Rep.ErrInvalid, 'NBD_OPT_LIST takes no data');
        const name = Buffer.from(this.exp.name, 'utf8');
        const desc = Buffer.from(this.exp.description, 'utf8');
        const b = Buffer.allocUnsafe(4 + name.length + desc.length);
        b.writeUInt32BE(name.length, 0);
        b.set(name, 4);
        b.set(desc, 4 + name.length);
        this.reply(option, P.Rep.Server, b);
        this.reply(option, P.Rep.Ack);
        return;
      }
      case P.Opt.Info:
      case P.Opt.Go:
        return this.infoOrGo(option, data);
      case P.Opt.StructuredReply:
        if (data.length) return this.error(option, P.Rep.ErrInvalid, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        this.structured = true;
        this.reply(option, P.Rep.Ack);
        return;
      case P.Opt.ListMetaContext:
      case P.Opt.SetMetaContext:
        return this.metaContexts(option, data);
      case P.Opt.StartTls:
        return this.error(option, P.Rep.ErrPolicy, 'TLS is not offered: this server listens on a Unix socket or a loopback address only');
      default:
        return this.error(option, P.Rep.ErrUnsup, `option ${option} is not supported`);
    }
  }

  private infoOrGo(option: number, data: Buffer): void {
    let name: string;
    let requests: number[];
    try {
      const s = P.readString(data, 0, 'export name');
      name = s.value;
      if (s.next + 2 > data.length) throw new BridgeError('EINVAL', 'missing count of information requests');
      const n = data.readUInt16BE(s.next);
      if (s.next + 2 + 2 * n !== data.length) throw new BridgeError('EINVAL', `${n} information requests do not match the option length`);
      requests = Array.from({ length: n }, (_, i) => data.readUInt16BE(s.next + 2 + 2 * i));
    } catch (e) {
      return this.error(option, P.Rep.ErrInvalid, errorMessage(e));
    }
    if (!this.knownName(name)) return this.error(option, P.Rep.ErrUnknown, `no export named "${name}" (this server has "${this.exp.name}")`);
    const dev = this.exp.device;
    this.reply(option, P.Rep.Info, P.infoExport(dev.size, this.transmissionFlags()));
    if (requests.includes(P.InfoType.Name)) this.reply(option, P.Rep.Info, P.infoString(P.InfoType.Name, this.exp.name));
    if (requests.includes(P.InfoType.Description)) this.reply(option, P.Rep.Info, P.infoString(P.InfoType.Description, this.exp.description));
    // Any alignment works; the device's block size is what it prefers.
    if (requests.includes(P.InfoType.BlockSize)) this.reply(option, P.Rep.Info, P.infoBlockSize(1, Math.max(4096, dev.blockSize), P.MAX_REQUEST));
    this.reply(option, P.Rep.Ack);
    if (option === P.Opt.Go) this.enterTransmission();
  }

  private metaContexts(option: number, data: Buffer): void {
    if (!this.structured) return this.error(option, P.Rep.ErrInvalid, 'negotiate structured replies before metadata contexts');
    const queries: string[] = [];
    let name: string;
    try {
      const s = P.readString(data, 0, 'export name');
      name = s.value;
      if (s.next + 4 > data.length) throw new BridgeError('EINVAL', 'missing count of queries');
      const n = data.readUInt32BE(s.next);
      let at = s.next + 4;
      for (let i = 0; i < n; i++) {
        const q = P.readString(data, at, `query ${i}`);
        queries.push(q.value);
        at = q.next;
      }
      if (at !== data.length) throw new BridgeError('EINVAL', 'trailing bytes after the queries');
    } catch (e) {
      return this.error(option, P.Rep.ErrInvalid, errorMessage(e));
    }
    if (!this.knownName(name)) return this.error(option, P.Rep.ErrUnknown, `no export named "${name}"`);
    const list = option === P.Opt.ListMetaContext;
    // LIST with no query or the bare namespace lists everything we have; otherwise names must match.
    const wanted = queries.some((q) => q === P.BASE_ALLOCATION || (list && q === 'base:')) || (list && queries.length === 0);
    if (!list) this.metaContext = wanted;
    if (wanted) {
      const text = Buffer.from(P.BASE_ALLOCATION, 'utf8');
      const b = Buffer.allocUnsafe(4 + text.length);
      b.writeUInt32BE(list ? 0 : P.BASE_ALLOCATION_ID, 0);
      b.set(text, 4);
      this.reply(option, P.Rep.MetaContext, b);
    }
    this.reply(option, P.Rep.Ack);
  }

  private enterTransmission(): void {
    this.state = { kind: 'request' };
    this.log.debug('NBD client in transmission', { structured: this.structured, metaContext: this.metaContext });
  }

  // ---- transmission ----

  private request(header: Buffer): void {
    if (header.readUInt32BE(0) !== P.REQUEST_MAGIC) throw new BridgeError('EINVAL', 'bad request magic');
    const type = header.readUInt16BE(6);
    const length = header.readUInt32BE(24);
    if (type === P.Cmd.Write) {
      // The payload follows whatever we think of the request: a refused write's payload is read and dropped.
      const refused = !this.writable || length > P.MAX_REQUEST;
      if (refused && length > 0) this.state = { kind: 'discard', remaining: length, header };
      else if (length > 0) this.state = { kind: 'payload', header };
      else this.run(header, Buffer.alloc(0));
      return;
    }
    if (type === P.Cmd.Disc) {
      this.log.debug('NBD client disconnects');
      this.stopping = true;
      this.finish();
      return;
    }
    this.run(header, undefined);
  }

  private discard(chunk: Buffer): void {
    const s = this.state as Extract<State, { kind: 'discard' }>;
    const take = Math.min(chunk.length, s.remaining);
    // Bytes past the payload belong to the next request: give them back to the stream.
    if (take < chunk.length) this.socket.unshift(chunk.subarray(take));
    s.remaining -= take;
    if (s.remaining > 0) return;
    this.state = { kind: 'request' };
    const length = s.header.readUInt32BE(24);
    this.sendError(
      s.header,
      !this.writable ? P.NBD_EPERM : P.NBD_EINVAL,
      !this.writable ? 'the export is read-only' : `write of ${length} bytes exceeds ${P.MAX_REQUEST}`,
    );
  }

  /** Validates a request and runs it on the device; the reply is sent when it completes. */
  private run(header: Buffer, payload: Buffer | undefined): void {
    const flags = header.readUInt16BE(4);
    const type = header.readUInt16BE(6);
    const offset = Number(header.readBigUInt64BE(16));
    const length = header.readUInt32BE(24);
    const dev = this.exp.device;
    const fail = (errno: number, message: string): void => this.sendError(header, errno, message);
    if (flags & ~KNOWN_CMD_FLAGS) return fail(P.NBD_EINVAL, `unknown command flags 0x${flags.toString(16)}`);
    if (flags & P.CMD_FLAG_DF && (type !== P.Cmd.Read || !this.structured)) return fail(P.NBD_EINVAL, 'DF applies to structured reads only');
    const isWrite = type === P.Cmd.Write || type === P.Cmd.WriteZeroes || type === P.Cmd.Trim;
    if (isWrite && !this.writable) return fail(P.NBD_EPERM, 'the export is read-only');
    const ranged = type !== P.Cmd.Flush;
    if (ranged) {
      if (length === 0) return fail(P.NBD_EINVAL, 'zero-length request');
      if (offset + length > dev.size) {
        const errno = type === P.Cmd.Write || type === P.Cmd.WriteZeroes ? P.NBD_ENOSPC : P.NBD_EINVAL;
        return fail(errno, `request at ${offset}+${length} is past the end of the export (${dev.size} bytes)`);
      }
      if (type === P.Cmd.Read && length > P.MAX_REQUEST) return fail(P.NBD_EINVAL, `read of ${length} bytes exceeds ${P.MAX_REQUEST}`);
    } else if (offset !== 0 || length !== 0) return fail(P.NBD_EINVAL, 'flush takes no offset or length');

    let work: Promise<void>;
    switch (type) {
      case P.Cmd.Read:
        work = this.read(header, offset, length);
        break;
      case P.Cmd.Write:
        work = this.thenFua(dev.write(payload!, offset), flags).then(() => this.sendOk(header));
        break;
      case P.Cmd.Flush:
        work = dev.flush().then(() => this.sendOk(header));
        break;
      case P.Cmd.Trim:
        work = this.thenFua(dev.trim(offset, length), flags).then(() => this.sendOk(header));
        break;
      case P.Cmd.WriteZeroes: {
        // Without NO_HOLE the device may release the range (trim reads back as zeros too).
        const z = !(flags & P.CMD_FLAG_NO_HOLE) && dev.capabilities.trim ? dev.trim(offset, length) : dev.zero(offset, length);
        work = this.thenFua(z, flags).then(() => this.sendOk(header));
        break;
      }
      case P.Cmd.BlockStatus:
        if (!this.metaContext) return fail(P.NBD_EINVAL, 'block status needs the base:allocation context (NBD_OPT_SET_META_CONTEXT)');
        work = this.blockStatus(header, offset, length, (flags & P.CMD_FLAG_REQ_ONE) !== 0);
        break;
      default:
        return fail(P.NBD_EINVAL, `command ${type} is not supported`);
    }
    this.inFlight++;
    work
      .catch((e: unknown) => {
        this.log.warn('NBD request failed', { type, offset, length, error: errorMessage(e) });
        this.sendError(header, P.nbdErrno(e), errorMessage(e));
      })
      .finally(() => {
        this.inFlight--;
        if (this.stopping) this.finish();
        else this.pump();
      });
  }

  private thenFua(p: Promise<void>, flags: number): Promise<void> {
    return flags & P.CMD_FLAG_FUA ? p.then(() => this.exp.device.flush()) : p;
  }

  private async read(header: Buffer, offset: number, length: number): Promise<void> {
    // One buffer holds the reply header and the data: one socket write, no copy.
    const at = this.structured ? P.STRUCTURED_HEADER + 8 : P.SIMPLE_HEADER;
    const buf = this.pool.take(at + length);
    try {
      await this.exp.device.read(buf.subarray(at), offset);
    } catch (e) {
      this.pool.give(buf);
      throw e;
    }
    if (this.structured) {
      P.putStructuredHeader(buf, 0, P.REPLY_FLAG_DONE, P.ReplyType.OffsetData, header.subarray(8, 16), 8 + length);
      buf.writeBigUInt64BE(BigInt(offset), P.STRUCTURED_HEADER);
    } else P.putSimpleHeader(buf, 0, 0, header.subarray(8, 16));
    this.send(buf, () => this.pool.give(buf));
  }

  private async blockStatus(header: Buffer, offset: number, length: number, one: boolean): Promise<void> {
    const dev = this.exp.device;
    const extents: Extent[] = dev.extents ? await dev.extents(offset, length) : [{ length, hole: false, zero: false }];
    const out: [number, number][] = [];
    let covered = 0;
    for (const e of extents) {
      const n = Math.min(e.length, length - covered);
      if (n <= 0) break;
      const flags = (e.hole ? P.STATE_HOLE : 0) | (e.zero ? P.STATE_ZERO : 0);
      const last = out[out.length - 1];
      if (last && last[1] === flags) last[0] += n;
      else {
        if (out.length >= (one ? 1 : MAX_EXTENTS)) break;
        out.push([n, flags]);
      }
      covered += n;
    }
    if (out.length === 0) throw new BridgeError('EIO', `the device reported no extents at ${offset}`);
    const b = Buffer.allocUnsafe(P.STRUCTURED_HEADER + 4 + 8 * out.length);
    P.putStructuredHeader(b, 0, P.REPLY_FLAG_DONE, P.ReplyType.BlockStatus, header.subarray(8, 16), 4 + 8 * out.length);
    b.writeUInt32BE(P.BASE_ALLOCATION_ID, P.STRUCTURED_HEADER);
    out.forEach(([n, f], i) => {
      b.writeUInt32BE(n, P.STRUCTURED_HEADER + 4 + 8 * i);
      b.writeUInt32BE(f, P.STRUCTURED_HEADER + 8 + 8 * i);
    });
    this.send(b);
  }

  private sendOk(header: Buffer): void {
    const b = Buffer.allocUnsafe(P.SIMPLE_HEADER);
    P.putSimpleHeader(b, 0, 0, header.subarray(8, 16));
    this.send(b);
  }

  private sendError(header: Buffer, errno: number, message: string): void {
    const handle = header.subarray(8, 16);
    // A structured client gets the message too; simple replies carry only the number (and no data).
    if (this.structured) return this.send(P.structuredError(handle, errno, message));
    const b = Buffer.allocUnsafe(P.SIMPLE_HEADER);
    P.putSimpleHeader(b, 0, errno, handle);
    this.send(b);
  }

  private send(b: Buffer, done?: () => void): void {
    if (this.socket.destroyed || !this.socket.writable) {
      done?.();
      return;
    }
    this.socket.write(b, done);
  }

  /** Ends the connection once nothing is in flight (after NBD_CMD_DISC, EOF or close()). */
  private finish(): void {
    if (this.inFlight > 0 || this.state.kind === 'done') return;
    this.state = { kind: 'done' };
    this.socket.end();
  }

  private hardDisconnect(): void {
    this.state = { kind: 'done' };
    this.stopping = true;
    this.socket.destroy();
  }
}
