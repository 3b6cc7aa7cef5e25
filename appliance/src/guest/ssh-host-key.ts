/**
 * An ed25519 SSH host key made in this process (Node's crypto) and written in OpenSSH's own private
 * key format, so that a restored template copy gets its new host key without starting ssh-keygen
 * (~0.15 s under emulation, plus forking the agent). Format: PROTOCOL.key of OpenSSH —
 * "openssh-key-v1\0", cipher "none", kdf "none", one key, its public blob, then the private section
 * (check ints, type, public key, 64-byte private key = seed || public key, comment, padding to 8).
 */
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';

function sshString(b: Buffer | string): Buffer {
  const data = typeof b === 'string' ? Buffer.from(b) : b;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  return Buffer.concat([len, data]);
}

function uint32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

export interface HostKey {
  /** OpenSSH private key file content. */
  privateKey: string;
  /** `ssh-ed25519 AAAA...` */
  publicLine: string;
  /** SHA-256 of the public key blob, hex (OpenSSH shows it base64 as SHA256:...). */
  sha256: string;
}

export function generateHostKey(comment = ''): HostKey {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  // SPKI and PKCS#8 DER of ed25519 end with the 32-byte public key and the 32-byte seed.
  const pub = publicKey.export({ type: 'spki', format: 'der' }).subarray(-32);
  const seed = privateKey.export({ type: 'pkcs8', format: 'der' }).subarray(-32);
  const blob = Buffer.concat([sshString('ssh-ed25519'), sshString(pub)]);
  const check = randomBytes(4);
  let priv = Buffer.concat([check, check, sshString('ssh-ed25519'), sshString(pub), sshString(Buffer.concat([seed, pub])), sshString(comment)]);
  const pad = (8 - (priv.length % 8)) % 8;
  priv = Buffer.concat([priv, Buffer.from(Array.from({ length: pad }, (_, i) => i + 1))]);
  const body = Buffer.concat([
    Buffer.from('openssh-key-v1\0'),
    sshString('none'),
    sshString('none'),
    sshString(''),
    uint32(1),
    sshString(blob),
    sshString(priv),
  ]);
  const b64 = body.toString('base64').replace(/(.{70})/g, '$1\n');
  return {
    privateKey: `-----BEGIN OPENSSH PRIVATE KEY-----\n${b64.trimEnd()}\n-----END OPENSSH PRIVATE KEY-----\n`,
    publicLine: `ssh-ed25519 ${blob.toString('base64')}${comment ? ` ${comment}` : ''}`,
    sha256: createHash('sha256').update(blob).digest('hex'),
  };
}

/** Writes key and .pub beside the current ones, then renames (sshd never reads half a key). */
export function installHostKey(key: HostKey, file: string): void {
  writeFileSync(`${file}.new`, key.privateKey, { mode: 0o600 });
  writeFileSync(`${file}.pub.new`, key.publicLine + '\n', { mode: 0o644 });
  renameSync(`${file}.new`, file);
  renameSync(`${file}.pub.new`, `${file}.pub`);
}
