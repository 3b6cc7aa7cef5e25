/**
 * The config drive: how the host hands the appliance its configuration before boot, on any hypervisor
 * and from any host OS without filesystem tools. It is a small raw disk: a fixed magic line, the JSON
 * length, the JSON, and its SHA-256, padded to CONFIG_DRIVE_SIZE. It holds no secrets (those are
 * pushed over SSH after boot and live only in guest memory) — `encodeConfigDrive` refuses any.
 *
 * Two kinds of boot: a normal one carries the agent configuration; a *template* boot (the VM whose
 * saved state later instances are restored from) carries none — its agent waits for a `configure`
 * request (shared/src/protocol.ts) — and names the serial device on which the host hands every
 * restored copy fresh entropy and the time (appliance/src/guest/restore.ts).
 *
 * The JSON starts `{"version":1,"name":"…","sshPort":N,` so that the appliance's shell init can read
 * the port without a JSON parser (image-build/rootfs/usr/sbin/bridge-init).
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { agentConfigSchema } from './config.js';
import { BridgeError } from './errors.js';

export const CONFIG_DRIVE_MAGIC = 'BRIDGE-CONFIG-DRIVE v1\n';
export const CONFIG_DRIVE_SIZE = 1024 * 1024;

/** An instance name: also the guest's hostname. */
export const INSTANCE_NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
/** An OpenSSH authorized_keys line of the key types sshd accepts here. */
export const SSH_PUBLIC_KEY_RE = /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-\S+) [A-Za-z0-9+/=]+( .*)?$/;

export const guestConfigSchema = z
  .object({
    version: z.literal(1),
    /** Instance name (also the guest hostname). */
    name: z.string().regex(INSTANCE_NAME_RE),
    /** The only key sshd accepts (OpenSSH authorized_keys line). */
    sshAuthorizedKey: z.string().regex(SSH_PUBLIC_KEY_RE, 'an OpenSSH public key line'),
    sshPort: z.number().int().min(1).max(65535).default(22),
    /** The agent configuration; secrets in it must be {"pushed": NAME} references. Absent on a template boot. */
    agent: agentConfigSchema.optional(),
    /** Template boots only: the guest serial device the host's restore seed arrives on. */
    template: z
      .object({ seedDevice: z.string().regex(/^\/dev\/tty[A-Za-z0-9]+$/, 'a serial device such as /dev/ttyS1') })
      .strict()
      .optional(),
  })
  .strict()
  .refine((c) => (c.agent === undefined) !== (c.template === undefined), {
    message: 'exactly one of "agent" (a normal boot) and "template" (a template boot)',
  });

export type GuestConfig = z.infer<typeof guestConfigSchema>;
export type GuestConfigInput = z.input<typeof guestConfigSchema>;

/** Any secret reference other than {pushed} would make the guest read a host file or env var. */
function assertOnlyPushedSecrets(value: unknown, path: string): void {
  if (Array.isArray(value)) return value.forEach((v, i) => assertOnlyPushedSecrets(v, `${path}[${i}]`));
  if (value && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    if (('file' in obj || 'env' in obj) && Object.keys(obj).length === 1) {
      throw new BridgeError('CONFIG', `${path}: the config drive may only carry {"pushed": NAME} secret references`);
    }
    for (const [k, v] of Object.entries(obj)) assertOnlyPushedSecrets(v, `${path}.${k}`);
  }
}

export function encodeConfigDrive(config: GuestConfigInput): Buffer {
  const parsed = guestConfigSchema.safeParse(config);
  if (!parsed.success) {
    throw new BridgeError('CONFIG', parsed.error.issues.map((i) => `config drive: ${i.path.join('.')}: ${i.message}`).join('\n'));
  }
  assertOnlyPushedSecrets(config.agent, 'agent');
  const { version, name, sshPort, ...rest } = parsed.data;
  const json = Buffer.from(JSON.stringify({ version, name, sshPort, ...rest }), 'utf8');
  const header = Buffer.from(`${CONFIG_DRIVE_MAGIC}${json.length}\n`, 'ascii');
  const digest = Buffer.from(createHash('sha256').update(json).digest('hex') + '\n', 'ascii');
  const total = header.length + json.length + 1 + digest.length;
  if (total > CONFIG_DRIVE_SIZE) throw new BridgeError('CONFIG', `config drive: configuration is too large (${total} bytes)`);
  const out = Buffer.alloc(CONFIG_DRIVE_SIZE);
  Buffer.concat([header, json, Buffer.from('\n'), digest]).copy(out);
  return out;
}

/** Reads a config drive's bytes (the whole device or at least its used part). */
export function decodeConfigDrive(data: Buffer): GuestConfig {
  const magic = Buffer.from(CONFIG_DRIVE_MAGIC, 'ascii');
  if (!data.subarray(0, magic.length).equals(magic)) throw new BridgeError('EINVAL', 'not a bridge config drive (magic line missing)');
  const nl = data.indexOf(0x0a, magic.length);
  const length = Number(data.subarray(magic.length, nl).toString('ascii'));
  if (!Number.isSafeInteger(length) || length <= 0 || nl + 1 + length > data.length) throw new BridgeError('EINVAL', 'config drive: bad length');
  const json = data.subarray(nl + 1, nl + 1 + length);
  const digest = data.subarray(nl + 2 + length, nl + 2 + length + 64).toString('ascii');
  if (createHash('sha256').update(json).digest('hex') !== digest) throw new BridgeError('EIO', 'config drive: checksum mismatch (corrupt drive)');
  const parsed = guestConfigSchema.safeParse(JSON.parse(json.toString('utf8')));
  if (!parsed.success) throw new BridgeError('CONFIG', parsed.error.issues.map((i) => `config drive: ${i.path.join('.')}: ${i.message}`).join('\n'));
  return parsed.data;
}
