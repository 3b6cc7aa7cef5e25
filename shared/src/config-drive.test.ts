import { describe, expect, it } from 'vitest';
import { CONFIG_DRIVE_SIZE, decodeConfigDrive, encodeConfigDrive, type GuestConfigInput } from './config-drive.js';

const base: GuestConfigInput = {
  version: 1,
  name: 'demo',
  sshAuthorizedKey: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockKeyForTestsOnly0000000000000000000000 host',
  agent: {
    version: 1,
    users: [{ name: 'alice', password: { pushed: 'alice-password' } }],
    sources: [{ kind: 'directory', name: 'data', path: '/srv/data' }],
    exports: [{ kind: 'smb', name: 'data', from: 'data', users: ['alice'] }],
  },
};

describe('config drive', () => {
  it('round-trips a configuration and pads to a fixed size', () => {
    const img = encodeConfigDrive(base);
    expect(img.length).toBe(CONFIG_DRIVE_SIZE);
    const back = decodeConfigDrive(img);
    expect(back.name).toBe('demo');
    expect(back.agent!.exports[0]).toMatchObject({ kind: 'smb', users: ['alice'] });
  });

  it('refuses secrets that point at host files or environment variables', () => {
    const bad = structuredClone(base);
    bad.agent!.users = [{ name: 'alice', password: { file: '/home/me/pw' } }];
    expect(() => encodeConfigDrive(bad)).toThrow(/pushed/);
  });

  it('detects a corrupted drive', () => {
    const img = encodeConfigDrive(base);
    const at = img.indexOf(Buffer.from('/srv/data'));
    img[at] = 0x5f;
    expect(() => decodeConfigDrive(img)).toThrow(/checksum/);
    expect(() => decodeConfigDrive(Buffer.alloc(4096))).toThrow(/magic/);
  });
});
