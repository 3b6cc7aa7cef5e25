import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseEntropy, parseSeedLine, RootHelper } from './restore.js';
import { generateHostKey, installHostKey } from './ssh-host-key.js';

const dir = mkdtempSync(join(tmpdir(), 'bridge-restore-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('restore seed', () => {
  it('parses the host seed line and refuses anything else', () => {
    const hex = 'ab'.repeat(64);
    expect(parseSeedLine(`seed ${hex} 1764700000000`)).toEqual({ entropy: Buffer.from(hex, 'hex'), timeMs: 1764700000000 });
    expect(() => parseSeedLine('seed abcd 1764700000000')).toThrow(/at least 32 random bytes/);
    expect(() => parseSeedLine(`seed ${hex}`)).toThrow(/expected "seed/);
    expect(() => parseSeedLine('hello')).toThrow(/expected "seed/);
    expect(() => parseEntropy('zz'.repeat(40), 'x')).toThrow(/hex/);
  });

  it('root helper: answers each request in order and names what it refuses', async () => {
    const helper = RootHelper.start();
    try {
      // Only the harmless requests run on the test host: an unknown one, and entropy without a clock.
      await expect((helper as unknown as { request(l: string): Promise<void> }).request('bogus 1')).rejects.toThrow(/unknown request bogus/);
      if (process.getuid?.() === 0) await helper.seedKernel(Buffer.alloc(32, 7));
      else await expect(helper.seedKernel(Buffer.alloc(32, 7))).rejects.toThrow(/RNDADDENTROPY/);
    } finally {
      helper.stop();
    }
  });
});

describe('SSH host key made in process', () => {
  it('is read back by ssh-keygen: same public key, same SHA-256 fingerprint, private file 0600', () => {
    for (let i = 0; i < 20; i++) {
      const key = generateHostKey(i % 2 ? 'bridge' : '');
      const file = join(dir, 'ssh_host_ed25519_key');
      installHostKey(key, file);
      const derived = execFileSync('ssh-keygen', ['-y', '-f', file]).toString().trim().split(' ').slice(0, 2).join(' ');
      expect(derived).toBe(key.publicLine.split(' ').slice(0, 2).join(' '));
      const fp = execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', `${file}.pub`])
        .toString()
        .split(' ')[1]!;
      expect(Buffer.from(fp.replace(/^SHA256:/, ''), 'base64').toString('hex')).toBe(key.sha256);
      expect(readFileSync(`${file}.pub`, 'utf8').trim()).toBe(key.publicLine);
    }
    const a = generateHostKey();
    const b = generateHostKey();
    expect(a.sha256).not.toBe(b.sha256);
  });
});
