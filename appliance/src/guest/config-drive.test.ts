import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encodeConfigDrive, type GuestConfigInput } from '../../../shared/src/config-drive.js';
import { applyGuestConfig, findConfigDrive, readConfigDrive, type GuestPaths } from './config-drive.js';

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
  paths = { sys: join(dir, 'sys'), dev: join(dir, 'dev'), proc: join(dir, 'proc'), root: join(dir, 'root') };
  mkdirSync(join(paths.sys, 'block'), { recursive: true });
  mkdirSync(paths.dev);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('guest config drive', () => {
  it('puts the SSH port where the shell init reads it, with sed, without a JSON parser', () => {
    // The same expression as image-build/rootfs/usr/sbin/bridge-init.
    const port = (img: Buffer): string =>
      execFileSync('sed', ['-n', '3s/^{"version":1,"name":"[a-z0-9-]*","sshPort":\\([0-9]\\{1,5\\}\\),.*/\\1/p'], { input: img.subarray(0, 4096) })
        .toString()
        .trim();
    expect(port(encodeConfigDrive(config))).toBe('2222');
    expect(port(encodeConfigDrive({ ...config, sshPort: undefined }))).toBe('22');
    const template = encodeConfigDrive({
      version: 1,
      name: 'bridge-template',
      sshAuthorizedKey: config.sshAuthorizedKey,
      template: { seedDevice: '/dev/ttyS1' },
    });
    expect(port(template)).toBe('22');
  });

  it('refuses a drive with both or neither of an agent configuration and a template', () => {
    const { agent: _agent, ...bare } = config;
    expect(() => encodeConfigDrive(bare)).toThrow(/exactly one of "agent".*"template"/);
    expect(() => encodeConfigDrive({ ...config, template: { seedDevice: '/dev/ttyS1' } })).toThrow(/exactly one/);
    expect(() => encodeConfigDrive({ ...bare, template: { seedDevice: '/etc/passwd' } })).toThrow(/serial device/);
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
    // Well framed but wrong inside: the schema names the field.
    const bad = Buffer.from(encodeConfigDrive(config));
    const json = JSON.stringify({ version: 1, name: 'Demo_1', sshPort: 22, sshAuthorizedKey: 'hunter2', agent: config.agent });
    const digest = createHash('sha256').update(json).digest('hex');
    bad.fill(0);
    Buffer.from(`BRIDGE-CONFIG-DRIVE v1\n${json.length}\n${json}\n${digest}\n`).copy(bad);
    disk('vdc', bad, 'bridge-config');
    expect(() => readConfigDrive(join(paths.dev, 'vdc'))).toThrow(/name[\s\S]*sshAuthorizedKey/);
  });

  it('writes the one authorized key, hostname, port and agent config with tight modes', () => {
    disk('vdb', encodeConfigDrive(config), 'bridge-config');
    const dev = findConfigDrive(paths);
    const applied = applyGuestConfig(readConfigDrive(dev), dev, paths);
    expect(applied).toMatchObject({ name: 'demo-1', sshPort: 2222 });
    expect(readFileSync(join(paths.proc, 'sys/kernel/hostname'), 'utf8')).toBe('demo-1');
    const keys = readFileSync(join(paths.root, 'root/.ssh/authorized_keys'), 'utf8');
    expect(keys).toBe(config.sshAuthorizedKey + '\n');
    expect(statSync(join(paths.root, 'root/.ssh/authorized_keys')).mode & 0o777).toBe(0o600);
    expect(statSync(join(paths.root, 'root/.ssh')).mode & 0o777).toBe(0o700);
    expect(readFileSync(join(paths.root, 'run/bridge/hostname'), 'utf8')).toBe('demo-1\n');
    const agent = JSON.parse(readFileSync(join(paths.root, 'run/bridge/agent.json'), 'utf8'));
    expect(agent.users[0].password).toEqual({ pushed: 'alice-password' });
    expect(statSync(join(paths.root, 'run/bridge/agent.json')).mode & 0o777).toBe(0o600);
  });

  it('applies a template drive: key and hostname, no agent configuration', () => {
    const { agent: _agent, ...bare } = config;
    disk('vdb', encodeConfigDrive({ ...bare, name: 'bridge-template', template: { seedDevice: '/dev/ttyS1' } }), 'bridge-config');
    const dev = findConfigDrive(paths);
    const drive = readConfigDrive(dev);
    expect(drive.template).toEqual({ seedDevice: '/dev/ttyS1' });
    applyGuestConfig(drive, dev, paths);
    expect(readFileSync(join(paths.root, 'root/.ssh/authorized_keys'), 'utf8')).toBe(config.sshAuthorizedKey + '\n');
    expect(() => statSync(join(paths.root, 'run/bridge/agent.json'))).toThrow();
    expect(JSON.parse(readFileSync(join(paths.root, 'run/bridge/guest.json'), 'utf8'))).toMatchObject({ name: 'bridge-template', template: true });
  });
});
