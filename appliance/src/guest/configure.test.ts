import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Logger } from '../../../shared/src/logger.js';
import type { ConfigureParams } from '../../../shared/src/protocol.js';
import { applyConfigure } from './configure.js';
import type { GuestPaths } from './config-drive.js';
import { waitForPaths, waitForSerials, wantedSerials } from './disks.js';

let dir: string;
let paths: GuestPaths;
let clock: number[];
const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockKeyForTestsOnly0000000000000000000000 inst';
const agent = {
  version: 1,
  users: [{ name: 'alice', password: { pushed: 'pw' } }],
  sources: [{ kind: 'disk', name: 'data', path: 'serial:bridge-src0', partition: 'whole', fstype: 'ext4', readOnly: true }],
  exports: [{ kind: 'smb', name: 'data', from: 'data', users: ['alice'] }],
};
const params = (over: Partial<ConfigureParams> = {}): ConfigureParams => ({
  agent,
  name: 'inst-1',
  sshAuthorizedKey: KEY,
  timeMs: Date.now(),
  entropy: 'cd'.repeat(32),
  ...over,
});
const opts = () => ({ runtimeDir: '/run/bridge', paths, urandom: join(dir, 'urandom'), setClock: (t: number) => clock.push(t) });

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'bridge-configure-'));
  paths = { sys: join(dir, 'sys'), dev: join(dir, 'dev'), proc: join(dir, 'proc'), root: join(dir, 'root') };
  mkdirSync(join(paths.root, 'run', 'bridge'), { recursive: true });
  mkdirSync(join(paths.root, 'root', '.ssh'), { recursive: true });
  writeFileSync(join(paths.root, 'root', '.ssh', 'authorized_keys'), 'ssh-ed25519 AAAAtemplatekey template\n');
  clock = [];
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('configure (a restored template copy becomes an instance)', () => {
  it('replaces the template key, sets the hostname, mixes the entropy in, keeps a good clock', () => {
    const { config, result } = applyConfigure(params(), opts());
    expect(config.sources[0]).toMatchObject({ name: 'data', path: 'serial:bridge-src0' });
    expect(result).toEqual({ hostname: 'inst-1', clockStepMs: 0 });
    expect(readFileSync(join(paths.root, 'root/.ssh/authorized_keys'), 'utf8')).toBe(KEY + '\n');
    expect(statSync(join(paths.root, 'root/.ssh/authorized_keys')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(paths.proc, 'sys/kernel/hostname'), 'utf8')).toBe('inst-1');
    expect(readFileSync(join(dir, 'urandom')).toString('hex')).toBe('cd'.repeat(32));
    expect(JSON.parse(readFileSync(join(paths.root, 'run/bridge/agent.json'), 'utf8'))).toEqual(agent);
    expect(clock).toEqual([]);
  });

  it('steps a clock that is more than a second off', () => {
    const t = Date.now() + 3_600_000;
    expect(applyConfigure(params({ timeMs: t }), opts()).result.clockStepMs).toBeGreaterThan(3_500_000);
    expect(clock).toEqual([t]);
  });

  it('refuses bad input, naming each field, and changes nothing', () => {
    expect(() => applyConfigure(params({ name: 'Bad_Name', sshAuthorizedKey: 'hunter2', timeMs: 5 }), opts())).toThrow(
      /name[\s\S]*sshAuthorizedKey[\s\S]*timeMs/,
    );
    expect(() => applyConfigure(params({ entropy: 'abcd' }), opts())).toThrow(/entropy: expected at least 32 random bytes/);
    expect(() => applyConfigure(params({ agent: { version: 1, sources: [] } }), opts())).toThrow(/configure: agent: sources/);
    expect(() => applyConfigure(params({ agent: { ...agent, runtimeDir: '/tmp/x' } }), opts())).toThrow(/runtimeDir must be \/run\/bridge/);
    expect(readFileSync(join(paths.root, 'root/.ssh/authorized_keys'), 'utf8')).toContain('template');
  });
});

describe('disks by serial', () => {
  it('waits for hot-plugged disks, and names the ones that never come', async () => {
    const lines: string[] = [];
    const log = new Logger({ write: (l) => lines.push(l) });
    const wanted = wantedSerials({ sources: [agent.sources[0] as never, { kind: 'memory', name: 'm', size: 1 } as never] });
    expect([...wanted]).toEqual([['bridge-src0', 'data']]);
    mkdirSync(join(paths.sys, 'block'), { recursive: true });
    setTimeout(() => {
      mkdirSync(join(paths.sys, 'block', 'vdc'));
      writeFileSync(join(paths.sys, 'block', 'vdc', 'serial'), 'bridge-src0\n');
    }, 100);
    expect(await waitForSerials(wanted, 5000, log, paths)).toEqual([]);
    expect(await waitForSerials(new Map([['bridge-src9', 'other']]), 100, log, paths)).toEqual(['bridge-src9']);
    expect(lines.join('\n')).toMatch(/disk did not appear serial=bridge-src9 source=other/);
    setTimeout(() => writeFileSync(join(dir, 'fuse'), ''), 100);
    expect(await waitForPaths([join(dir, 'fuse')], 5000, log)).toEqual([]);
    expect(await waitForPaths([join(dir, 'nope')], 100, log)).toEqual([join(dir, 'nope')]);
    expect(lines.join('\n')).toMatch(/device node did not appear path=\S+nope/);
  });
});
