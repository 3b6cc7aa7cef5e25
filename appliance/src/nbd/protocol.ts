/**
 * NBD wire constants and message builders (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md;
 * values as in libnbd's and nbdkit's nbd-protocol.h). Everything on the wire is big-endian.
 */
import { BridgeError, isBridgeError } from '../../../shared/src/errors.js';

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server) and client flags.
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

// Transmission flags.
export const TF_HAS_FLAGS = 1 << 0;
export const TF_READ_ONLY = 1 << 1;
export const TF_SEND_FLUSH = 1 << 2;
export const TF_SEND_FUA = 1 << 3;
export const TF_SEND_TRIM = 1 << 5;
export const TF_SEND_WRITE_ZEROES = 1 << 6;
export const TF_SEND_DF = 1 << 7;
export const TF_CAN_MULTI_CONN = 1 << 8;

export const enum Opt {
  ExportName = 1,
  Abort = 2,
  List = 3,
  StartTls = 5,
  Info = 6,
  Go = 7,
  StructuredReply = 8,
  ListMetaContext = 9,
  SetMetaContext = 10,
}

const ERR = 0x80000000;
export const enum Rep {
  Ack = 1,
  Server = 2,
  Info = 3,
  MetaContext = 4,
  ErrUnsup = ERR + 1,
  ErrPolicy = ERR + 2,
  ErrInvalid = ERR + 3,
  ErrTlsReqd = ERR + 5,
  ErrUnknown = ERR + 6,
  ErrShutdown = ERR + 7,
  ErrTooBig = ERR + 9,
}

export const enum InfoType {
  Export = 0,
  Name = 1,
  Description = 2,
  BlockSize = 3,
}

export const enum Cmd {
  Read = 0,
  Write = 1,
  Disc = 2,
  Flush = 3,
  Trim = 4,
  Cache = 5,
  WriteZeroes = 6,
  BlockStatus = 7,
}

export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;

export const REPLY_FLAG_DONE = 1 << 0;
export const enum ReplyType {
  None = 0,
  OffsetData = 1,
  OffsetHole = 2,
  BlockStatus = 5,
  Error = (1 << 15) + 1,
}

export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;
export const BASE_ALLOCATION = 'base:allocation';
/** Our one metadata context's id (nbdkit uses 1 too). */
export const BASE_ALLOCATION_ID = 1;

// NBD errno values (the protocol's own numbering; equal to Linux's).
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/** Largest request we accept (what nbdkit advertises too); also the maximum block size we advertise. */
export const MAX_REQUEST = 32 * 1024 * 1024;
/** Option payloads above this are a client misbehaving: the connection is dropped. */
export const MAX_OPTION = 64 * 1024;
export const REQUEST_HEADER = 28;
export const SIMPLE_HEADER = 16;
export const STRUCTURED_HEADER = 20;

/** The NBD error for a failed device call. Out-of-range I/O was checked before the device saw it. */
export function nbdErrno(e: unknown): number {
  if (isBridgeError(e)) {
    switch (e.code) {
      case 'EROFS':
        return NBD_EPERM;
      case 'EINVAL':
      case 'ERANGE':
        return NBD_EINVAL;
      case 'ENOTSUP':
        return NBD_ENOTSUP;
      case 'CLOSED':
        return NBD_ESHUTDOWN;
      default:
        return NBD_EIO;
    }
  }
  const code = (e as { code?: unknown } | null)?.code;
  if (code === 'ENOSPC') return NBD_ENOSPC;
  if (code === 'ENOMEM') return NBD_ENOMEM;
  return NBD_EIO;
}

/** An option reply: magic, option, reply type, length, data. */
export function optionReply(option: number, type: number, data: Uint8Array = EMPTY): Buffer {
  const b = Buffer.allocUnsafe(20 + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  b.set(data, 20);
  return b;
}

const EMPTY = Buffer.alloc(0);

/** NBD_REP_INFO payload for NBD_INFO_EXPORT. */
export function infoExport(size: number, flags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(InfoType.Export, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

export function infoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(InfoType.BlockSize, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

export function infoString(type: InfoType.Name | InfoType.Description, s: string): Buffer {
  const text = Buffer.from(s, 'utf8');
  const b = Buffer.allocUnsafe(2 + text.length);
  b.writeUInt16BE(type, 0);
  b.set(text, 2);
  return b;
}

/** Writes a simple reply header at `at`. */
export function putSimpleHeader(b: Buffer, at: number, error: number, handle: Buffer): void {
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
  b.writeUInt32BE(error, at + 4);
  handle.copy(b, at + 8, 0, 8);
}

/** Writes a structured reply chunk header at `at`. */
export function putStructuredHeader(b: Buffer, at: number, flags: number, type: number, handle: Buffer, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  handle.copy(b, at + 8, 0, 8);
  b.writeUInt32BE(length, at + 16);
}

/** A structured NBD_REPLY_TYPE_ERROR chunk (final) carrying a message for people. */
export function structuredError(handle: Buffer, error: number, message: string): Buffer {
  const text = Buffer.from(message.slice(0, 1024), 'utf8');
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER + 6 + text.length);
  putStructuredHeader(b, 0, REPLY_FLAG_DONE, ReplyType.Error, handle, 6 + text.length);
  b.writeUInt32BE(error, STRUCTURED_HEADER);
  b.writeUInt16BE(text.length, STRUCTURED_HEADER + 4);
  b.set(text, STRUCTURED_HEADER + 6);
  return b;
}

/** Reads a length-prefixed (32-bit) string at `at`; throws EINVAL when it runs past the data. */
export function readString(data: Buffer, at: number, what: string): { value: string; next: number } {
  if (at + 4 > data.length) throw new BridgeError('EINVAL', `${what}: truncated length`);
  const n = data.readUInt32BE(at);
  if (at + 4 + n > data.length) throw new BridgeError('EINVAL', `${what}: ${n} bytes announced, fewer sent`);
  return { value: data.toString('utf8', at + 4, at + 4 + n), next: at + 4 + n };
}
