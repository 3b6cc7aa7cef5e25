/**
 * Warm starts without a VM: the QEMU command lines and QMP sequences (exact arguments), the QMP client
 * against a fake QEMU, the template store (atomic commit, checks, pruning), the seed line's host side,
 * and when a start may use a template at all.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { VmSpec } from '../../wrapper/src/hypervisors/backend.js';
import {
  awaitIncoming,
  hotAddDiskCommands,
  hotAddDisks,
  qemuArgs,
  QemuBackend,
  saveState,
  saveStateCommands,
  seedSocketPath,
  shellQuote,
  templateIdentity,
  type QmpRunner,
} from '../../wrapper/src/hypervisors/qemu.js';
import { QmpClient } from '../../wrapper/src/hypervisors/qmp.js';
import { VirtualBoxBackend } from '../../wrapper/src/hypervisors/virtualbox.js';
import { warmStartPlan } from '../../wrapper/src/instance.js';
import { parseSeedReply, sendRestoreSeed, seedLine } from '../../wrapper/src/restore-seed.js';
import {
  commitGeneration,
  findTemplate,
  listTemplates,
  newGeneration,
  pruneTemplates,
  templateKey,
  verifyTemplate,
  writeGenerationKey,
  type TemplateIdentity,
} from '../../wrapper/src/templates.js';
import { templateIdentityOf } from '../../wrapper/src/warm-start.js';
import { FakeRunner } from './fake-runner.js';

let dir: string;
let spec: VmSpec;
const servers: Server[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'bridge-warm-'));
  process.env.BRIDGE_STATE_DIR = join(dir, 'state');
  spec = {
    name: 'demo',
    dir: join(dir, 'vm'),
    bootDisk: { path: '/img/appliance.raw', format: 'raw' },
    kernel: { kernel: '/img/vmlinuz', initrd: '/img/initrd.img', cmdline: 'root=LABEL=bridge-root console=ttyS0' },
    memoryMiB: 1024,
    cpus: 2,
    disks: [{ path: '/tpl/gen/config.img', format: 'raw', serial: 'bridge-config', readOnly: true }],
    shares: [],
    forwards: [{ name: 'ssh', hostPort: 40022, guestPort: 22 }],
    accel: 'tcg',
    seedSocket: '/vm/seed.sock',
  };
});
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
  delete process.env.BRIDGE_STATE_DIR;
  rmSync(dir, { recursive: true, force: true });
});

/** Records QMP calls and answers from a script. */
class Recorder implements QmpRunner {
  calls: string[] = [];
  constructor(private readonly answer: (cmd: string, n: number) => unknown = () => ({})) {}
  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    this.calls.push(args ? `${command} ${JSON.stringify(args)}` : command);
    return this.answer(command, this.calls.filter((c) => c.startsWith(command)).length);
  }
}

describe('QEMU command lines and QMP sequences for saved states', () => {
  it('adds the seed serial port after the console, and -incoming for a restore', () => {
    const args = qemuArgs({ ...spec, restoreFrom: "/st/it's/memory.state" }, 'linux');
    expect(args.slice(args.indexOf('-machine'), args.indexOf('-machine') + 2)).toEqual(['-machine', 'pc']);
    const serials = args.flatMap((a, i) => (a === '-serial' ? [args[i + 1]] : []));
    expect(serials).toEqual([`file:${join(spec.dir, 'console.log')}`, 'unix:/vm/seed.sock,server=on,wait=off']);
    expect(args.slice(-2)).toEqual(['-incoming', `exec:cat '/st/it'\\''s/memory.state'`]);
    expect(shellQuote("a'b")).toBe(`'a'\\''b'`);
    expect(qemuArgs({ ...spec, seedSocket: undefined } as VmSpec, 'linux').filter((a) => a === '-serial')).toHaveLength(1);
  });

  it('identifies a template by its devices, not by the instance name, paths, ports or the saved file', () => {
    const id = templateIdentity(spec, 'linux');
    const other = templateIdentity(
      {
        ...spec,
        name: 'other',
        dir: '/elsewhere',
        bootDisk: { path: '/cache/x/appliance.raw', format: 'raw' },
        disks: [{ ...spec.disks[0]!, path: '/tpl/gen2/config.img' }],
        forwards: [
          { name: 'ssh', hostPort: 50022, guestPort: 22 },
          { name: 'smb', hostPort: 50445, guestPort: 445 },
        ],
        seedSocket: '/other/seed.sock',
        restoreFrom: '/tpl/memory.state',
      },
      'linux',
    );
    expect(other).toBe(id);
    expect(id).not.toMatch(/40022|demo|\/vm\//);
    expect(templateIdentity({ ...spec, memoryMiB: 2048 }, 'linux')).not.toBe(id);
    expect(templateIdentity({ ...spec, disks: [...spec.disks, { ...spec.disks[0]!, serial: 'bridge-src0' }] }, 'linux')).not.toBe(id);
    const ident = (over: Partial<TemplateIdentity>): string =>
      templateKey({ imageHash: 'h', imageVersion: 'v', qemuVersion: '7.2.22', accel: 'tcg', memoryMiB: 1024, cpus: 2, devices: id, ...over });
    expect(ident({})).toMatch(/^[0-9a-f]{32}$/);
    expect(new Set([ident({}), ident({ imageHash: 'h2' }), ident({ qemuVersion: '8.0.0' }), ident({ accel: 'kvm' }), ident({ cpus: 1 })]).size).toBe(5);
    expect(ident({ imageVersion: 'other' })).toBe(ident({})); // the version is in the hash already
  });

  it('the template identity of a start ignores where the config drive is', () => {
    const o = {
      spec: { ...spec, disks: [], seedSocket: undefined } as VmSpec,
      image: { hash: 'h', version: 'v', sshUser: 'root', sshPort: 22 },
      qemuVersion: '7.2.22',
      platform: 'linux' as const,
    };
    const a = templateIdentityOf(o);
    expect(a).toMatchObject({ imageHash: 'h', qemuVersion: '7.2.22', accel: 'tcg', memoryMiB: 1024, cpus: 2 });
    expect(a.devices).toContain('virtio-blk-pci,drive=disk0,serial=bridge-config');
    expect(a.devices).toContain('-serial unix:/SEED,server=on,wait=off');
  });

  it('saves with stop + migrate to a file, then polls until completed; reports a failed save', async () => {
    expect(saveStateCommands('/t/m.state')).toEqual([{ execute: 'stop' }, { execute: 'migrate', arguments: { uri: `exec:cat > '/t/m.state'` } }]);
    const q = new Recorder((cmd, n) => (cmd === 'query-migrate' ? { status: n < 3 ? 'active' : 'completed' } : {}));
    await saveState(q, '/t/m.state', 10_000, 1);
    expect(q.calls).toEqual(['stop', `migrate {"uri":"exec:cat > '/t/m.state'"}`, 'query-migrate', 'query-migrate', 'query-migrate']);
    const bad = new Recorder((cmd) => (cmd === 'query-migrate' ? { status: 'failed', 'error-desc': 'disk full' } : {}));
    await expect(saveState(bad, '/t/m.state', 10_000, 1)).rejects.toThrow(/saving the VM state failed: disk full/);
  });

  it('waits for an incoming state to load; hot-plugs disks as raw blockdev + virtio-blk with the serial', async () => {
    const q = new Recorder((cmd, n) => (cmd === 'query-status' ? { status: n < 2 ? 'inmigrate' : 'paused' } : {}));
    expect(await awaitIncoming(q, 10_000, 1)).toBe('paused');
    const disk = { path: '/data/linux.img', format: 'raw' as const, serial: 'bridge-src0', readOnly: true };
    expect(hotAddDiskCommands(disk)).toEqual([
      {
        execute: 'blockdev-add',
        arguments: {
          driver: 'raw',
          'node-name': 'node-bridge-src0',
          'read-only': true,
          file: { driver: 'file', filename: '/data/linux.img', 'read-only': true },
        },
      },
      { execute: 'device_add', arguments: { driver: 'virtio-blk-pci', drive: 'node-bridge-src0', serial: 'bridge-src0', id: 'dev-bridge-src0' } },
    ]);
    const h = new Recorder();
    await hotAddDisks(h, [disk, { ...disk, path: '/data/b.img', serial: 'bridge-src1', readOnly: false }]);
    expect(h.calls.map((c) => c.split(' ')[0])).toEqual(['blockdev-add', 'device_add', 'blockdev-add', 'device_add']);
    expect(h.calls[2]).toContain('"read-only":false');
  });

  it('keeps the seed socket path short', () => {
    expect(seedSocketPath('/short')).toBe('/short/seed.sock');
    expect(seedSocketPath('/' + 'x'.repeat(150))).toMatch(/bridge-seed-[0-9a-f]{16}\.sock$/);
  });
});

/** A fake QEMU monitor: greeting, capabilities, then scripted answers (and an event). */
function fakeQmp(path: string, answer: (cmd: { execute: string; arguments?: unknown }) => object): Promise<string[]> {
  const seen: string[] = [];
  return new Promise((resolve) => {
    const server = createServer((sock) => {
      sock.write(JSON.stringify({ QMP: { version: { qemu: { major: 7 } }, capabilities: [] } }) + '\r\n');
      let buf = '';
      sock.on('data', (d) => {
        buf += d.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const cmd = JSON.parse(buf.slice(0, nl)) as { execute: string; arguments?: unknown };
          buf = buf.slice(nl + 1);
          seen.push(cmd.arguments ? `${cmd.execute} ${JSON.stringify(cmd.arguments)}` : cmd.execute);
          if (cmd.execute === 'cont') sock.write(JSON.stringify({ event: 'RESUME', timestamp: {} }) + '\r\n');
          sock.write(JSON.stringify(answer(cmd)) + '\r\n');
        }
      });
    });
    servers.push(server);
    server.listen(path, () => resolve(seen));
  });
}

describe('QMP client', () => {
  it('negotiates capabilities, answers in order, keeps events, turns errors into messages', async () => {
    const path = join(dir, 'qmp.sock');
    const seen = await fakeQmp(path, (c) =>
      c.execute === 'device_add'
        ? { error: { class: 'GenericError', desc: 'Duplicate ID' } }
        : { return: c.execute === 'query-status' ? { status: 'paused' } : {} },
    );
    const q = await QmpClient.connect(path);
    expect(await q.execute('query-status')).toEqual({ status: 'paused' });
    await q.execute('cont');
    await expect(q.execute('device_add', { driver: 'virtio-blk-pci', id: 'x' })).rejects.toThrow(/QMP device_add: Duplicate ID/);
    expect(q.events.map((e) => e.event)).toEqual(['RESUME']);
    q.close();
    expect(seen).toEqual(['qmp_capabilities', 'query-status', 'cont', 'device_add {"driver":"virtio-blk-pci","id":"x"}']);
    await expect(QmpClient.connect(join(dir, 'none.sock'), 500)).rejects.toThrow(/QMP/);
  });
});

describe('template store', () => {
  const id: TemplateIdentity = { imageHash: 'h', imageVersion: '0.1.0+h', qemuVersion: '7.2.22', accel: 'tcg', memoryMiB: 1024, cpus: 2, devices: 'args' };
  const stream = Buffer.concat([Buffer.from([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]), Buffer.alloc(100_000, 9)]);

  function make(key: string): ReturnType<typeof newGeneration> {
    const gen = newGeneration(key);
    writeFileSync(gen.memoryFile, stream, { mode: 0o600 });
    writeFileSync(gen.configDrive, Buffer.alloc(1024), { mode: 0o600 });
    writeGenerationKey(gen, 'PRIVATE KEY');
    return gen;
  }

  it('commits a generation atomically with private modes, finds it, verifies it; a newer one replaces it', async () => {
    const key = templateKey(id);
    expect(findTemplate(key)).toBeUndefined();
    const first = make(key);
    expect(findTemplate(key)).toBeUndefined(); // not named in template.json yet
    const meta = await commitGeneration(first, id, 1500);
    expect(meta).toMatchObject({ key, generation: first.generation, memoryBytes: stream.length, saveMs: 1500 });
    expect(meta.memorySha256).toBe(createHash('sha256').update(stream).digest('hex'));
    const found = findTemplate(key);
    expect(found && 'template' in found && found.template.privateKey).toBe('PRIVATE KEY');
    if (!found || !('template' in found)) throw new Error('no template');
    await verifyTemplate(found.template);
    for (const p of [first.dir, join(first.dir, '..'), join(first.dir, '../..')]) expect(statSync(p).mode & 0o777).toBe(0o700);
    for (const f of [first.memoryFile, first.keyFile, join(first.dir, '../template.json')]) expect(statSync(f).mode & 0o777).toBe(0o600);
    const second = make(key);
    await commitGeneration(second, id, 1400);
    expect(existsSync(first.dir)).toBe(false);
    expect((findTemplate(key) as { template: { meta: { generation: string } } }).template.meta.generation).toBe(second.generation);
    expect(listTemplates()).toMatchObject([{ key, meta: { generation: second.generation } }]);
  });

  it('reports a truncated, corrupt or foreign memory file instead of using it', async () => {
    const key = templateKey(id);
    const gen = make(key);
    await commitGeneration(gen, id, 1);
    const t = (findTemplate(key) as { template: Parameters<typeof verifyTemplate>[0] }).template;
    const bytes = readFileSync(gen.memoryFile);
    bytes[50_000] = bytes[50_000]! ^ 1;
    writeFileSync(gen.memoryFile, bytes);
    await expect(verifyTemplate(t)).rejects.toThrow(/is corrupt \(SHA-256/);
    bytes[0] = 0;
    writeFileSync(gen.memoryFile, bytes);
    await expect(verifyTemplate(t)).rejects.toThrow(/not a QEMU state file/);
    truncateSync(gen.memoryFile, 1000);
    expect(findTemplate(key)).toEqual({ problem: expect.stringMatching(/has 1000 bytes, expected 100008 \(truncated/) });
    writeFileSync(join(gen.dir, '../template.json'), '{');
    expect(findTemplate(key)).toEqual({ problem: expect.stringMatching(/template.json: .*JSON/) });
  });

  it('keeps only the most recently used templates', async () => {
    const keys: string[] = [];
    for (let i = 0; i < 4; i++) {
      const key = templateKey({ ...id, memoryMiB: 512 + i });
      keys.push(key);
      await commitGeneration(make(key), id, 1);
      const old = new Date(Date.now() - (10 - i) * 60_000);
      utimesSync(join(process.env.BRIDGE_STATE_DIR!, 'templates', key, 'template.json'), old, old);
    }
    // Each commit prunes: the fourth removed the least recently used.
    expect(
      listTemplates()
        .map((t) => t.key)
        .sort(),
    ).toEqual(keys.slice(1).sort());
    expect(pruneTemplates(1).sort()).toEqual([keys[1], keys[2]].sort());
    expect(listTemplates().map((t) => t.key)).toEqual([keys[3]]);
  });
});

describe('the seed line, host side', () => {
  it('sends 64 random bytes and the time; returns the fingerprint the guest answers', async () => {
    expect(seedLine(Buffer.alloc(64, 0xab), 1764700000000)).toBe(`seed ${'ab'.repeat(64)} 1764700000000\n`);
    const path = join(dir, 'seed.sock');
    let got = '';
    const server = createServer((sock) =>
      sock.on('data', (d) => {
        got += d.toString();
        // The guest's tty echoes nothing (raw mode); it answers with CR-free lines.
        sock.write(`ok ${'1f'.repeat(32)}\n`);
      }),
    );
    servers.push(server);
    await new Promise<void>((r) => server.listen(path, r));
    const before = Date.now();
    expect(await sendRestoreSeed(path, 5000)).toBe('1f'.repeat(32));
    const [word, hex, time] = got.trim().split(' ');
    expect(word).toBe('seed');
    expect(hex).toMatch(/^[0-9a-f]{128}$/);
    expect(Number(time)).toBeGreaterThanOrEqual(before);
    expect(() => parseSeedReply('error RNDADDENTROPY: Operation not permitted')).toThrow(/could not apply its seed: RNDADDENTROPY/);
    expect(() => parseSeedReply('garbage')).toThrow(/unexpected answer/);
    await expect(sendRestoreSeed(join(dir, 'nobody.sock'), 200)).rejects.toThrow(/seed socket/);
  });
});

describe('which starts use a template', () => {
  it('QEMU with a template-capable image and a known version, unless turned off or folders are shared', () => {
    const qemu = new QemuBackend({ runner: new FakeRunner('linux') });
    const ctx = { runner: new FakeRunner('linux') };
    const image = { features: ['template'] };
    expect(warmStartPlan({}, qemu, { shares: [] }, image, '7.2.22', ctx)).toEqual({ ok: true, qemuVersion: '7.2.22' });
    expect(warmStartPlan({ snapshot: false }, qemu, { shares: [] }, image, '7.2.22', ctx)).toEqual({ ok: false, reason: '--no-snapshot' });
    process.env.BRIDGE_SNAPSHOT = '0';
    expect(warmStartPlan({}, qemu, { shares: [] }, image, '7.2.22', ctx)).toMatchObject({ ok: false, reason: 'BRIDGE_SNAPSHOT=0' });
    delete process.env.BRIDGE_SNAPSHOT;
    expect(warmStartPlan({}, qemu, { shares: [{}] }, image, '7.2.22', ctx)).toMatchObject({ ok: false, reason: /folder shares/ });
    expect(warmStartPlan({}, qemu, { shares: [] }, { features: [] }, '7.2.22', ctx)).toMatchObject({ ok: false, reason: /predates templates/ });
    expect(warmStartPlan({}, qemu, { shares: [] }, image, undefined, ctx)).toMatchObject({ ok: false, reason: /unknown QEMU version/ });
    expect(warmStartPlan({}, qemu, { shares: [] }, image, '7.2.22', { runner: new FakeRunner('win32') })).toMatchObject({ ok: false });
    const vbox = new VirtualBoxBackend({ runner: new FakeRunner('linux') });
    expect(warmStartPlan({}, vbox, { shares: [] }, image, '7.2.22', ctx)).toMatchObject({ ok: false, reason: /QEMU only/ });
  });
});
