/**
 * Warm starts with the real appliance (QEMU TCG): the first `bridge start` boots and saves the
 * template, two more are restored from it side by side. Each copy must be its own machine — kernel
 * and agent randomness, SSH host key, clock — with the template's SSH key refused once configured and
 * its hot-plugged disk served over SMB; `bridge stop` leaves nothing; a template QEMU cannot load
 * falls back to a cold boot. Skipped when no appliance image has been built.
 */
import { readFileSync, rmSync, truncateSync, writeFileSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentStatus, RandomProbe } from '../../shared/src/protocol.js';
import { AgentSession } from '../../wrapper/src/agent-client.js';
import type { StartResult } from '../../wrapper/src/instance.js';
import { sha256File } from '../../wrapper/src/templates.js';
import { bridge, findManifest, makeEnv, run } from './e2e-helpers.js';

const manifest = findManifest();

interface StateFile {
  reachable: { ports: { ssh: number } };
  hostKeySha256: string;
  vm: { consoleLog: string };
}

describe.skipIf(!manifest)('warm starts: one template, copies restored side by side (QEMU TCG)', () => {
  const env = manifest ? makeEnv(manifest) : {};
  const root = env.E2E_ROOT ?? '';
  const password = 'warm-Pass-1234';
  const names = ['tpl-a', 'copy-b', 'copy-c'] as const;
  const started: Record<string, StartResult> = {};
  const state = (name: string): StateFile => JSON.parse(readFileSync(join(env.BRIDGE_STATE_DIR!, 'instances', name, 'state.json'), 'utf8')) as StateFile;
  const instanceKey = (name: string): string => readFileSync(join(env.BRIDGE_CONFIG_DIR!, 'keys', name, 'id_ed25519'), 'utf8');
  const templateDir = (): string => {
    const tdir = join(env.BRIDGE_STATE_DIR!, 'templates');
    const [key] = readdirSync(tdir);
    const meta = JSON.parse(readFileSync(join(tdir, key!, 'template.json'), 'utf8')) as { generation: string };
    return join(tdir, key!, meta.generation);
  };
  const session = (name: string, privateKey = instanceKey(name)): Promise<AgentSession> =>
    AgentSession.connect(
      { host: '127.0.0.1', port: state(name).reachable.ports.ssh, user: 'root', privateKey, hostKeySha256: state(name).hostKeySha256 },
      20_000,
    );
  const inGuest = async (name: string, command: string): Promise<string> => {
    const s = await session(name);
    try {
      const r = await s.exec(command);
      expect(r.code, r.stderr).toBe(0);
      return r.stdout.trim();
    } finally {
      s.close();
    }
  };
  const start = async (name: string, args: string[]): Promise<{ result: StartResult; stderr: string }> => {
    const r = await bridge(
      ['start', '--name', name, '--password-file', join(root, 'pw'), '--no-mount', '--json', '--boot-timeout', '300', ...args],
      env,
      420_000,
    );
    expect(r.code, r.stderr).toBe(0);
    return { result: JSON.parse(r.stdout) as StartResult, stderr: r.stderr };
  };

  beforeAll(async () => {
    writeFileSync(join(root, 'pw'), password + '\n', { mode: 0o600 });
    for (const [name, text] of [
      ['b', 'bee\n'],
      ['c', 'sea\n'],
    ] as const) {
      mkdirSync(join(root, `tree-${name}`));
      writeFileSync(join(root, `tree-${name}`, `${name}.txt`), text);
      expect((await run('mkfs.ext4', ['-q', '-F', '-d', join(root, `tree-${name}`), join(root, `${name}.img`), '16M'])).code).toBe(0);
    }
    started['tpl-a'] = (await start('tpl-a', [])).result;
    // Side by side: both copies start at once from the one template.
    const [b, c] = await Promise.all([
      start('copy-b', ['--source', `disk:${join(root, 'b.img')}:ro`]),
      start('copy-c', ['--source', `disk:${join(root, 'c.img')}:ro`]),
    ]);
    started['copy-b'] = b.result;
    started['copy-c'] = c.result;
  }, 900_000);

  afterAll(async () => {
    await bridge(['stop', '--all', '--timeout', '3'], env, 120_000).catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
  }, 180_000);

  it('made the template on the first start and restored the others from it, in private files', () => {
    expect(started['tpl-a']!.boot).toBe('template-created');
    expect(started['copy-b']!.boot).toBe('restored');
    expect(started['copy-c']!.boot).toBe('restored');
    const gen = templateDir();
    expect(statSync(gen).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(gen)) expect(statSync(join(gen, f)).mode & 0o777, f).toBe(0o600);
  });

  it('gives each copy its own randomness: agent DRBGs, Node UUID batch and kernel; the agent process is the saved one', async () => {
    const probes: RandomProbe[] = [];
    const pids: number[] = [];
    const kernel: string[] = [];
    for (const name of names) {
      const s = await session(name);
      try {
        probes.push(await s.probeRandom());
        pids.push((await s.status()).pid);
        const r = await s.exec('head -c 32 /dev/urandom | busybox xxd -p -c 64; ps -o args | grep -c "[c]li.js serve"');
        const [urandom, agents] = r.stdout.trim().split('\n');
        kernel.push(urandom!);
        expect(agents).toBe('1');
      } finally {
        s.close();
      }
    }
    for (const k of ['mainThread', 'poolThread', 'uuid'] as const) expect(new Set(probes.map((p) => p[k])).size, k).toBe(3);
    expect(new Set(kernel).size).toBe(3);
    // The same pid in every copy: the process saved in the template answers, it was not restarted.
    expect(new Set(pids).size).toBe(1);
  });

  it('gives each copy a new SSH host key, none of them the template boot’s', () => {
    const console = readFileSync(join(env.BRIDGE_STATE_DIR!, 'instances', 'tpl-a', 'console.log'), 'utf8');
    const m = /ssh host key SHA256:(\S+)/.exec(console);
    expect(m).not.toBeNull();
    const templateBootKey = Buffer.from(m![1]!, 'base64').toString('hex');
    const keys = names.map((n) => state(n).hostKeySha256);
    expect(new Set([...keys, templateBootKey]).size).toBe(4);
  });

  it('refuses the template key once configured; accepts the instance key', async () => {
    const templateKey = readFileSync(join(templateDir(), 'id_ed25519'), 'utf8');
    for (const name of names) {
      await expect(session(name, templateKey)).rejects.toThrow(/authentication/i);
      expect(await inGuest(name, 'hostname')).toBe(name);
    }
  });

  it('sets the clock from the host', async () => {
    for (const name of names) {
      const guest = Number(await inGuest(name, 'date +%s'));
      expect(Math.abs(guest - Date.now() / 1000), name).toBeLessThan(5);
    }
  });

  it('serves each copy’s hot-plugged disk over SMB', async () => {
    for (const [name, file, text] of [
      ['copy-b', 'b.txt', 'bee\n'],
      ['copy-c', 'c.txt', 'sea\n'],
    ] as const) {
      const smb = started[name]!.endpoints.find((e) => e.protocol === 'smb')!;
      expect(smb.health).toBe('ok');
      const got = join(root, `got-${file}`);
      const r = await run('smbclient', [`//${smb.address}/${smb.path}`, '-p', String(smb.port), '-U', 'bridge', '-c', `get ${file} ${got}`], {
        ...process.env,
        PASSWD: password,
      });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(readFileSync(got, 'utf8')).toBe(text);
    }
  });

  it('stops every copy on the ACPI power button, in order, and leaves nothing running', async () => {
    for (const name of names) {
      const stop = await bridge(['stop', name, '--json'], env, 120_000);
      expect(stop.code, stop.stderr).toBe(0);
      // Not forced: the guest took the power button and ran its ordered power-off (agent first).
      expect(JSON.parse(stop.stdout)).toMatchObject([{ name, forced: false, problems: [] }]);
      const log = readFileSync(join(env.BRIDGE_STATE_DIR!, 'logs', `${name}.console.log`), 'utf8');
      expect(log).toMatch(/powering off[\s\S]*agent stopped[\s\S]*bye/);
    }
    const ps = await run('ps', ['-eo', 'stat=,args=']);
    expect(ps.stdout.split('\n').filter((l) => names.some((n) => l.includes(`bridge-${n}`)) && !l.trim().startsWith('Z'))).toEqual([]);
  });

  it('boots cold, saying why, when QEMU cannot load the template', async () => {
    // A stream cut in half whose recorded size and checksum say it is whole: only QEMU can tell.
    const gen = templateDir();
    const memory = join(gen, 'memory.state');
    truncateSync(memory, Math.floor(statSync(memory).size / 2));
    const metaFile = join(gen, '..', 'template.json');
    const meta = JSON.parse(readFileSync(metaFile, 'utf8')) as Record<string, unknown>;
    writeFileSync(metaFile, JSON.stringify({ ...meta, memoryBytes: statSync(memory).size, memorySha256: await sha256File(memory) }));
    const { result, stderr } = await start('cold-d', []);
    expect(result.boot).toBe('cold');
    expect(stderr).toMatch(/warm start not possible: booting cold .*QEMU (refused|could not load) the saved state/);
    expect(readdirSync(join(env.BRIDGE_STATE_DIR!, 'templates'))).toEqual([]);
    const status = JSON.parse((await bridge(['status', '--json'], env)).stdout) as { name: string; agent?: AgentStatus }[];
    expect(status.find((s) => s.name === 'cold-d')?.agent?.ready).toBe(true);
    expect((await bridge(['stop', 'cold-d'], env, 120_000)).code).toBe(0);
  }, 600_000);
});
