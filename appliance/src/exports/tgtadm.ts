/**
 * tgtd's management protocol, spoken directly over its unix socket (/var/run/tgtd/socket.N) instead
 * of running tgtadm: tgtadm only takes CHAP secrets as command-line arguments, which any process can
 * read in /proc/PID/cmdline while it runs. The protocol is tgt's usr/tgtadm.h (tgt 1.0.85, as
 * Debian 12 ships it; test/exports/tgtadm.test.ts checks that we send tgtadm's exact bytes):
 *
 *   request:  struct tgtadm_req (120 bytes, little-endian x86-64 layout)
 *               0 mode u32 · 4 op u32 · 8 lld char[64] · 72 len u32 (header + params) · 76 tid i32
 *               80 sid u64 · 88 lun u64 · 96 cid u32 · 100 host_no u32 · 104 device_type u32
 *               108 ac_dir u32 · 112 pack u32 · 116 force u32
 *             then, when there are any, the parameters "k=v,k=v" with a trailing NUL
 *   response: struct tgtadm_rsp { err u32; len u32 (header + text) }, then len - 8 bytes of text
 *
 * One request per connection, as tgtadm does.
 */
import { connect } from 'node:net';
import { BridgeError } from '../../../shared/src/errors.js';

export const TGTD_SOCKET_DIR = '/var/run/tgtd';

const MODES = { system: 0, target: 1, logicalunit: 2, portal: 3, lld: 4, session: 5, connection: 6, account: 7 } as const;
const OPS = { new: 0, delete: 1, show: 2, bind: 3, unbind: 4, update: 5 } as const;
const HEADER = 120;
const NO_LUN = 0xffff_ffff_ffff_ffffn;

/** enum tgtadm_errno, with tgtadm's own wording. */
const ERRORS = [
  'success',
  'unknown error',
  'out of memory',
  "can't find the driver",
  "can't find the target",
  "can't find the logical unit",
  "can't find the session",
  "can't find the connection",
  "can't find the binding",
  'this target already exists',
  'this binding already exists',
  'this logical unit number already exists',
  'this access control rule already exists',
  'this access control rule does not exist',
  'this account already exists',
  "can't find the account",
  'too many accounts',
  'invalid request',
  'this target already has an outgoing account',
  'this target is still active',
  'this logical unit is still active',
  'this driver is busy',
  "this operation isn't supported",
  'unknown parameter',
  'this device has Prevent Removal set',
];

export interface TgtRequest {
  mode: keyof typeof MODES;
  op: keyof typeof OPS;
  /** Target id; tgtadm sends -1 when none is given. */
  tid?: number;
  lun?: number;
  force?: boolean;
  /** account bind/unbind: the outgoing (mutual CHAP) account. */
  outgoing?: boolean;
  /** key=value parameters, in the order tgtadm writes them (name, path, bstype, bsoflags, blocksize, targetname, initiator-address, initiator-name, user, password). */
  params?: [string, string][];
  /** tgtadm's --params (e.g. "readonly=1"), sent as "targetOps ...,". */
  targetOps?: string;
  /** The lld, "iscsi" unless given. */
  lld?: string;
}

/** What a request is, for errors: never the parameter values (a password is one). */
export function describeRequest(r: TgtRequest): string {
  return `${r.mode} ${r.op}${r.tid !== undefined ? ` (tid ${r.tid})` : ''}`;
}

/** The request's bytes, exactly as tgtadm would send them. */
export function encodeRequest(r: TgtRequest): Buffer {
  const parts: string[] = [];
  for (const [k, v] of r.params ?? []) {
    // tgtd splits parameters at commas and C strings end at NUL: such a value would be cut or split.
    if (/[,\0\n]/.test(v)) throw new BridgeError('EINVAL', `tgtd ${describeRequest(r)}: the ${k} must not contain a comma, NUL or line break`);
    parts.push(`${k}=${v}`);
  }
  let text = parts.join(',');
  if (r.targetOps !== undefined) text += `${text ? ',' : ''}targetOps ${r.targetOps},`;
  const params = text ? Buffer.from(text + '\0', 'utf8') : Buffer.alloc(0);
  const h = Buffer.alloc(HEADER);
  h.writeUInt32LE(MODES[r.mode], 0);
  h.writeUInt32LE(OPS[r.op], 4);
  h.write(r.lld ?? 'iscsi', 8, 63, 'latin1');
  h.writeUInt32LE(HEADER + params.length, 72);
  h.writeInt32LE(r.tid ?? -1, 76);
  h.writeBigUInt64LE(r.lun === undefined ? NO_LUN : BigInt(r.lun), 88);
  h.writeUInt32LE(r.outgoing ? 1 : 0, 108);
  h.writeUInt32LE(r.force ? 1 : 0, 116);
  return Buffer.concat([h, params]);
}

/**
 * Sends one request to the tgtd listening on management channel `controlPort`; resolves with its
 * text answer (for show), rejects with tgtd's error named after the request.
 */
export function tgtadm(controlPort: number, r: TgtRequest, timeoutMs = 15_000): Promise<string> {
  const what = `tgtd ${describeRequest(r)}`;
  const request = encodeRequest(r);
  return new Promise((resolve, reject) => {
    const sock = connect({ path: `${TGTD_SOCKET_DIR}/socket.${controlPort}` });
    const chunks: Buffer[] = [];
    let got = 0;
    let done = false;
    const finish = (err: Error | undefined, text?: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(text ?? '');
    };
    const timer = setTimeout(() => finish(new BridgeError('EIO', `${what}: no answer from tgtd in ${timeoutMs} ms`)), timeoutMs);
    const parse = (): void => {
      const all = Buffer.concat(chunks, got);
      if (all.length < 8) return;
      const err = all.readUInt32LE(0);
      const len = all.readUInt32LE(4);
      if (err !== 0) {
        const code = err === 4 || err === 5 || err === 15 ? 'ENOENT' : 'EIO';
        return finish(new BridgeError(code, `${what}: ${ERRORS[err] ?? `tgtd error ${err}`}`, { tgtdError: err }));
      }
      if (all.length < len) return;
      finish(undefined, all.subarray(8, len).toString('utf8').replace(/\0+$/, ''));
    };
    sock.on('connect', () => sock.write(request));
    sock.on('data', (d: Buffer) => {
      chunks.push(d);
      got += d.length;
      parse();
    });
    sock.on('end', () => finish(new BridgeError('EIO', `${what}: tgtd closed the connection without a full answer`)));
    sock.on('error', (e: NodeJS.ErrnoException) =>
      finish(
        new BridgeError(e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? 'ENOENT' : 'EIO', `${what}: cannot reach tgtd: ${e.message}`, {}, { cause: e }),
      ),
    );
  });
}
