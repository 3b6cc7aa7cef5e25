/** The per-instance SSH key: ed25519, made by ssh2, private half 0600 outside the state directory. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { keyDir, writePrivate } from './state.js';

export interface InstanceKey {
  privateKeyPath: string;
  privateKey: string;
  /** OpenSSH authorized_keys line. */
  publicKey: string;
}

/**
 * An ed25519 pair that ssh2 can parse back: its generator emits a malformed OpenSSH private key about
 * once in 200 (measured here), which would make that instance unreachable.
 */
export function generateEd25519(comment: string): { private: string; public: string } {
  for (;;) {
    const pair = ssh2.utils.generateKeyPairSync('ed25519', { comment });
    if (!(ssh2.utils.parseKey(pair.private) instanceof Error)) return pair;
  }
}

export function createInstanceKey(name: string): InstanceKey {
  const pair = generateEd25519(`bridge-${name}`);
  const dir = keyDir(name);
  const privateKeyPath = writePrivate(dir, 'id_ed25519', pair.private);
  writePrivate(dir, 'id_ed25519.pub', pair.public.trim() + '\n');
  return { privateKeyPath, privateKey: pair.private, publicKey: pair.public.trim() };
}

export function loadInstanceKey(name: string): InstanceKey | undefined {
  const dir = keyDir(name);
  const privateKeyPath = join(dir, 'id_ed25519');
  if (!existsSync(privateKeyPath)) return undefined;
  return { privateKeyPath, privateKey: readFileSync(privateKeyPath, 'utf8'), publicKey: readFileSync(join(dir, 'id_ed25519.pub'), 'utf8').trim() };
}
