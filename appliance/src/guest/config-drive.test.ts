import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as shared from '../../../shared/src/config-drive.js';
import { encodeConfigDrive, decodeConfigDrive, type GuestConfigInput } from '../../../shared/src/config-drive.js';
import {
  applyGuestConfig,
  CONFIG_DRIVE_MAGIC,
  CONFIG_DRIVE_SIZE,
  findConfigDrive,
  parseConfigDrive,
  readConfigDrive,
  type GuestPaths,
} from './config-drive.js';

const config: GuestConfigInput = {
  version: 1,
  name: 'demo-1',
  sshAuthorizedKey: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockKeyForTestsOnly0000000000000000000000 host',
  sshPort: 2222,
  agent: {
    version: 1,
    users: [{ name: 'alice', password: { pushed: 'alice-password' } }],
    sources: [{ kind: 'directory', name: 'data', path: '/srv/data' }],
    exports: [{ kind: 'smb', name: 'data', from: 'data', users: ['alice'] }],
  },
};

let dir: string;
let paths: GuestPaths;

/** A fake /sys/block + /dev: each disk is a file of `bytes`, with an optional serial. */
function disk(name: string, bytes: Buffer, serial?: string): void {
  mkdirSync(join(paths.sys, 'block', name), { recursive: true });
  writeFileSync(join(paths.sys, 'block', name, 'size'), `${Math.ceil(bytes.length / 512)}\n`);
  if (serial !== undefined) writeFileSync(join(paths.sys, 'block', name, 'serial'), serial + '\n');
  writeFileSync(join(paths.dev, name), bytes);
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'bridge-guest-'));
  paths = { sys: join(dir, 'sys'), dev: join(dir, 'dev'), root: join(dir, 'root') };
  mkdirSync(join(paths.sys, 'block'), { recursive: true });
  mkdirSync(paths.dev);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('guest config drive', () => {
  it('reads the framing exactly as shared/src/config-drive.ts writes it', () => {
    expect(CONFIG_DRIVE_MAGIC).toBe(shared.CONFIG_DRIVE_MAGIC);
    expect(CONFIG_DRIVE_SIZE).toBe(shared.CONFIG_DRIVE_SIZE);
    const img = encodeConfigDrive(config);
    expect(parseConfigDrive(img)).toEqual(JSON.parse(JSON.stringify(config)));
    const full = decodeConfigDrive(img);
    expect([parseConfigDrive(img).name, parseConfigDrive(img).sshAuthorizedKey, parseConfigDrive(img).sshPort]).toEqual([
      full.name,
      full.sshAuthorizedKey,
      full.sshPort,
    ]);
    const noPort = encodeConfigDrive({ ...config, sshPort: undefined });
    expect(parseConfigDrive(noPort).sshPort).toBe(decodeConfigDrive(noPort).sshPort);
  });

  it('refuses a drive whose key or name is not what boot needs', () => {
    // A well-framed drive (right checksum) with fields encodeConfigDrive would have refused.
    const frame = (value: unknown): Buffer => {
      const json = Buffer.from(JSON.stringify(value));
      const digest = createHash('sha256').update(json).digest('hex');
      return Buffer.concat([Buffer.from(`${CONFIG_DRIVE_MAGIC}${json.length}\n`), json, Buffer.from(`\n${digest}\n`)]);
    };
    expect(parseConfigDrive(frame(config)).name).toBe('demo-1');
    expect(() => parseConfigDrive(frame({ ...config, name: 'Demo_1' }))).toThrow(/name/);
    expect(() => parseConfigDrive(frame({ ...config, sshAuthorizedKey: 'hunter2' }))).toThrow(/sshAuthorizedKey/);
    expect(() => parseConfigDrive(frame({ ...config, sshPort: 70000 }))).toThrow(/sshPort/);
    expect(() => parseConfigDrive(Buffer.alloc(4096))).toThrow(/magic/);
  });

  it('finds the drive by its serial, even when another disk carries the magic', () => {
    disk('vda', Buffer.alloc(4096), 'bridge-root');
    disk('vdb', encodeConfigDrive({ ...config, name: 'decoy' }), 'bridge-src0');
    disk('vdc', encodeConfigDrive(config), 'bridge-config');
    const dev = findConfigDrive(paths);
    expect(dev).toBe(join(paths.dev, 'vdc'));
    expect(readConfigDrive(dev).name).toBe('demo-1');
  });

  it('falls back to the magic line on a small disk when no serial is set', () => {
    disk('sda', Buffer.alloc(8192));
    disk('sdb', encodeConfigDrive(config));
    expect(findConfigDrive(paths)).toBe(join(paths.dev, 'sdb'));
  });

  it('says so when there is no config drive', () => {
    disk('vda', Buffer.alloc(4096), 'bridge-root');
    expect(() => findConfigDrive(paths)).toThrow(/no config drive/);
  });

  it('rejects a corrupt drive', () => {
    const img = encodeConfigDrive(config);
    img[40] = img[40]! ^ 0xff;
    disk('vdb', img, 'bridge-config');
    expect(() => readConfigDrive(findConfigDrive(paths))).toThrow(/checksum|length|JSON/);
  });

  it('writes the one authorized key, hostname, port and agent config with tight modes', () => {
    disk('vdb', encodeConfigDrive(config), 'bridge-config');
    const dev = findConfigDrive(paths);
    const applied = applyGuestConfig(readConfigDrive(dev), dev, paths);
    expect(applied).toMatchObject({ name: 'demo-1', sshPort: 2222 });
    const keys = readFileSync(join(paths.root, 'root/.ssh/authorized_keys'), 'utf8');
    expect(keys).toBe(config.sshAuthorizedKey + '\n');
    expect(statSync(join(paths.root, 'root/.ssh/authorized_keys')).mode & 0o777).toBe(0o600);
    expect(statSync(join(paths.root, 'root/.ssh')).mode & 0o777).toBe(0o700);
    expect(readFileSync(join(paths.root, 'run/bridge/hostname'), 'utf8')).toBe('demo-1\n');
    expect(readFileSync(join(paths.root, 'run/bridge/ssh-port'), 'utf8')).toBe('2222\n');
    const agent = JSON.parse(readFileSync(join(paths.root, 'run/bridge/agent.json'), 'utf8'));
    expect(agent.users[0].password).toEqual({ pushed: 'alice-password' });
    expect(statSync(join(paths.root, 'run/bridge/agent.json')).mode & 0o777).toBe(0o600);
  });
});
