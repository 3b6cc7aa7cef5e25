/**
 * The volume header (`header.json`): everything needed to open a volume except the passphrase.
 * The key comes from the passphrase through scrypt (memory-hard; N, r, p and salt are stored here);
 * a key check (HMAC of the volume id under a second derived key) tells a wrong passphrase apart
 * from corrupt data before anything is read or written.
 */
import { createHmac, hkdfSync, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { BridgeError } from '../../../shared/src/errors.js';

/**
 * Version 2 (new volumes): chunk objects carry a write generation bound into their AAD, checked
 * against an authenticated manifest (manifest.ts). Version 1 volumes still open, without it.
 */
export const FORMAT_VERSION = 2;
const READABLE_VERSIONS = [1, 2];
export const COMPRESSIONS = ['zstd', 'none'] as const;
export const CIPHERS = ['aes-256-gcm', 'none'] as const;
export type Compression = (typeof COMPRESSIONS)[number];
export type Cipher = (typeof CIPHERS)[number];

const headerSchema = z.object({
  format: z.literal('bridge-store'),
  version: z.number().int(),
  volumeId: z.string().regex(/^[0-9a-f]{32}$/),
  size: z.number().int().positive(),
  chunkSize: z.number().int(),
  compression: z.enum(COMPRESSIONS),
  compressionLevel: z.number().int().min(1).max(22),
  cipher: z.enum(CIPHERS),
  kdf: z.object({ name: z.literal('scrypt'), N: z.number().int(), r: z.number().int(), p: z.number().int(), salt: z.string() }).optional(),
  keyCheck: z.string().optional(),
  created: z.string(),
});
export type VolumeHeader = z.infer<typeof headerSchema>;

/** Default scrypt cost: 2^15 × 8 × 128 B = 32 MiB of memory, ~0.1 s here. */
export const DEFAULT_KDF = { N: 2 ** 15, r: 8, p: 1 };

export const MIN_CHUNK = 4096;
export const MAX_CHUNK = 4 * 1024 * 1024;

export function checkChunkSize(chunkSize: number): void {
  if (!Number.isInteger(chunkSize) || chunkSize < MIN_CHUNK || chunkSize > MAX_CHUNK || (chunkSize & (chunkSize - 1)) !== 0) {
    throw new BridgeError('EINVAL', `chunk size ${chunkSize} must be a power of two from 4K to 4M`);
  }
}

/** Throws EINVAL for a size that would shrink the volume or is not a byte count. */
export function checkGrowth(header: VolumeHeader, size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0) throw new BridgeError('EINVAL', `new size ${size} must be a positive number of bytes`);
  if (size < header.size) {
    throw new BridgeError(
      'EINVAL',
      `refusing to shrink volume ${header.volumeId} from ${header.size} to ${size} bytes: the data past the new end would be lost (only growing is supported)`,
    );
  }
}

export interface Keys {
  /** AES-256-GCM key for chunks. */
  data: Buffer;
  /** HMAC-SHA256 key of the manifest (derived from the data key by HKDF). */
  manifest: Buffer;
}

export interface NewHeaderOptions {
  size: number;
  chunkSize: number;
  compression: Compression;
  compressionLevel?: number;
  cipher: Cipher;
  passphrase?: string;
  kdf?: { N: number; r: number; p: number };
}

/** Builds the header of a new volume (and its keys). */
export async function newHeader(o: NewHeaderOptions): Promise<{ header: VolumeHeader; keys: Keys | undefined }> {
  checkChunkSize(o.chunkSize);
  if (!Number.isSafeInteger(o.size) || o.size <= 0) throw new BridgeError('EINVAL', `volume size ${o.size} must be a positive number of bytes`);
  const header: VolumeHeader = {
    format: 'bridge-store',
    version: FORMAT_VERSION,
    volumeId: randomBytes(16).toString('hex'),
    size: o.size,
    chunkSize: o.chunkSize,
    compression: o.compression,
    compressionLevel: o.compressionLevel ?? 3,
    cipher: o.cipher,
    created: new Date().toISOString(),
  };
  if (o.cipher === 'none') return { header, keys: undefined };
  if (!o.passphrase) throw new BridgeError('CONFIG', `encryption ${o.cipher} needs a passphrase (--passphrase-file FILE or BRIDGE_STORE_PASSPHRASE)`);
  const kdf = { name: 'scrypt' as const, ...(o.kdf ?? DEFAULT_KDF), salt: randomBytes(16).toString('base64') };
  header.kdf = kdf;
  const derived = await derive(o.passphrase, kdf);
  header.keyCheck = keyCheck(derived.check, header.volumeId);
  return { header, keys: keysFrom(derived.data, header.volumeId) };
}

/** Derives the keys of an existing volume; a wrong passphrase is EACCES. */
export async function unlock(header: VolumeHeader, passphrase: string | undefined): Promise<Keys | undefined> {
  if (header.cipher === 'none') return undefined;
  if (!passphrase)
    throw new BridgeError('CONFIG', `volume ${header.volumeId} is encrypted (${header.cipher}): give --passphrase-file FILE or BRIDGE_STORE_PASSPHRASE`);
  if (!header.kdf || !header.keyCheck) throw new BridgeError('EIO', `volume header is missing its KDF parameters or key check`);
  const derived = await derive(passphrase, header.kdf);
  const want = Buffer.from(header.keyCheck, 'base64');
  const got = Buffer.from(keyCheck(derived.check, header.volumeId), 'base64');
  if (want.length !== got.length || !timingSafeEqual(want, got)) {
    throw new BridgeError('EACCES', `wrong passphrase for volume ${header.volumeId} (key check failed); nothing was changed`);
  }
  return keysFrom(derived.data, header.volumeId);
}

function keysFrom(data: Buffer, volumeId: string): Keys {
  const manifest = Buffer.from(hkdfSync('sha256', data, Buffer.from(volumeId, 'hex'), 'bridge-store manifest', 32));
  return { data, manifest };
}

async function derive(passphrase: string, kdf: NonNullable<VolumeHeader['kdf']>): Promise<{ data: Buffer; check: Buffer }> {
  const maxmem = 128 * kdf.N * kdf.r * kdf.p + 64 * 1024 * 1024;
  const out = await new Promise<Buffer>((res, rej) =>
    scrypt(passphrase.normalize('NFC'), Buffer.from(kdf.salt, 'base64'), 64, { N: kdf.N, r: kdf.r, p: kdf.p, maxmem }, (err, key) =>
      err ? rej(err) : res(key),
    ),
  );
  return { data: out.subarray(0, 32), check: out.subarray(32, 64) };
}

function keyCheck(checkKey: Buffer, volumeId: string): string {
  return createHmac('sha256', checkKey).update(`bridge-store key check ${volumeId}`).digest('base64');
}

export function encodeHeader(h: VolumeHeader): Buffer {
  return Buffer.from(JSON.stringify(h, null, 2) + '\n');
}

export function decodeHeader(data: Buffer, location: string): VolumeHeader {
  let parsed: unknown;
  try {
    parsed = JSON.parse(data.toString('utf8'));
  } catch (e) {
    throw new BridgeError('EIO', `${location}: volume header is not valid JSON`, {}, { cause: e });
  }
  const r = headerSchema.safeParse(parsed);
  if (!r.success)
    throw new BridgeError('EIO', `${location}: volume header is invalid: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  const h = r.data;
  if (!READABLE_VERSIONS.includes(h.version))
    throw new BridgeError('ENOTSUP', `${location}: volume format version ${h.version} is not supported (this build reads ${READABLE_VERSIONS.join(' and ')})`);
  checkChunkSize(h.chunkSize);
  return h;
}
