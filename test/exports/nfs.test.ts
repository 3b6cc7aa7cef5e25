/**
 * NFS end to end: the agent serves trees through nfs-ganesha (NFSv4, and NFSv3 through rpcbind) on
 * 127.0.0.1; libnfs's tools list, read and write; root is squashed; an export for another client
 * address is refused; an export ganesha cannot create is failed on its own while the others serve.
 */
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/ports.js';
import { AgentProcess, leftovers, processGone, sh } from '../daemon/agent-process.js';

describe('nfs export', () => {
  let dir = '';
  let agent: AgentProcess;
  let port = 0;
  let mountPort = 0;
  const nfs = (path: string, extra = ''): string => `nfs://127.0.0.1${path}?version=4&nfsport=${port}${extra}`;
  // NFSv3 the way clients do it: the NFS and MOUNT ports come from rpcbind (port 111).
  const nfs3 = (path: string): string => `nfs://127.0.0.1${path}?version=3`;

  beforeAll(async () => {
    dir = AgentProcess.tempDir('bridge-nfs-');
    port = await freePort();
    mountPort = await freePort();
    for (const d of ['data', 'ro', 'local']) mkdirSync(join(dir, d));
    chmodSync(join(dir, 'data'), 0o777);
    writeFileSync(join(dir, 'data', 'hello.txt'), 'hello over nfs\n');
    writeFileSync(join(dir, 'ro', 'fixed.txt'), 'fixed\n');
    agent = new AgentProcess(dir, {
      version: 1,
      runtimeDir: join(dir, 'run'),
      listen: { address: '127.0.0.1', nfsPort: port, nfsMountPort: mountPort },
      sources: [
        { kind: 'directory', name: 'data', path: join(dir, 'data') },
        { kind: 'directory', name: 'ro', path: join(dir, 'ro') },
        // sysfs: a filesystem ganesha's FSAL VFS cannot export.
        { kind: 'directory', name: 'sys', path: '/sys/kernel', readOnly: true },
      ],
      exports: [
        { kind: 'nfs', name: 'data', from: 'data', clients: ['127.0.0.1'] },
        { kind: 'nfs', name: 'ro', from: 'ro', clients: ['127.0.0.0/8'], readOnly: true },
        { kind: 'nfs', name: 'elsewhere', from: 'data', clients: ['192.0.2.10'] },
        { kind: 'nfs', name: 'sysfs', from: 'sys', clients: ['127.0.0.1'], readOnly: true },
      ],
    });
    await agent.start();
  });

  afterAll(async () => {
    await agent?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reports NFS endpoints', async () => {
    const s = await agent.status();
    expect(s.ready).toBe(true);
    expect(s.exports.find((e) => e.name === 'data')!.endpoint).toEqual({
      protocol: 'nfs',
      address: '127.0.0.1',
      port,
      path: '/data',
      url: `nfs://127.0.0.1:${port}/data`,
    });
  });

  it('reports an export ganesha could not create as failed, with its reason; the others are ok', async () => {
    const s = await agent.status();
    expect(s.ready).toBe(true);
    const health = Object.fromEntries(s.exports.map((e) => [e.name, e.health]));
    expect(health).toEqual({ data: 'ok', ro: 'ok', elsewhere: 'ok', sysfs: 'failed' });
    const sysfs = s.exports.find((e) => e.name === 'sysfs')!;
    expect(sysfs.error).toMatch(/^nfs export "sysfs": ganesha could not create the export of \/sys\/kernel: .*resolve_posix_filesystem/);
    const ls = await sh('nfs-ls', [nfs('/sysfs/')]);
    expect(ls.code).not.toBe(0);
  });

  it('serves NFSv3 through rpcbind: nfs-ls, nfs-cat and nfs-cp', async () => {
    const s = await agent.status();
    expect(s.exports.find((e) => e.name === 'data')!.details!['versions']).toEqual([3, 4]);
    const rpc = await sh('rpcinfo', ['-p', '127.0.0.1']);
    expect(rpc.stdout).toMatch(new RegExp(`100003\\s+3\\s+tcp\\s+${port}\\s+nfs`));
    expect(rpc.stdout).toMatch(new RegExp(`100005\\s+3\\s+tcp\\s+${mountPort}\\s+mountd`));
    const ls = await sh('nfs-ls', [nfs3('/data/')]);
    expect(ls.code, ls.stderr).toBe(0);
    expect(ls.stdout).toMatch(/hello\.txt/);
    expect((await sh('nfs-cat', [nfs3('/data/hello.txt')])).stdout).toBe('hello over nfs\n');
    writeFileSync(join(dir, 'local', 'v3.txt'), 'written over v3\n');
    const up = await sh('nfs-cp', [join(dir, 'local', 'v3.txt'), nfs3('/data/v3.txt')]);
    expect(up.code, up.stderr).toBe(0);
    expect(readFileSync(join(dir, 'data', 'v3.txt'), 'utf8')).toBe('written over v3\n');
    expect(statSync(join(dir, 'data', 'v3.txt')).uid).toBe(65534);
    // v3 obeys the client restriction too.
    expect((await sh('nfs-ls', [nfs3('/elsewhere/')])).code).not.toBe(0);
  });

  it('lists, reads and writes with nfs-ls, nfs-cat and nfs-cp', async () => {
    const ls = await sh('nfs-ls', [nfs('/data/')]);
    expect(ls.code, ls.stderr).toBe(0);
    expect(ls.stdout).toMatch(/hello\.txt/);
    const cat = await sh('nfs-cat', [nfs('/data/hello.txt')]);
    expect(cat.stdout).toBe('hello over nfs\n');
    writeFileSync(join(dir, 'local', 'up.txt'), 'uploaded\n');
    const up = await sh('nfs-cp', [join(dir, 'local', 'up.txt'), nfs('/data/up.txt')]);
    expect(up.code, up.stderr).toBe(0);
    expect(readFileSync(join(dir, 'data', 'up.txt'), 'utf8')).toBe('uploaded\n');
    // Root squashing: the client's root wrote as nobody.
    expect(statSync(join(dir, 'data', 'up.txt')).uid).toBe(65534);
    const down = await sh('nfs-cp', [nfs('/data/hello.txt'), join(dir, 'local', 'down.txt')]);
    expect(down.code, down.stderr).toBe(0);
    expect(readFileSync(join(dir, 'local', 'down.txt'), 'utf8')).toBe('hello over nfs\n');
  });

  it('refuses writes to a read-only export and an export for another client address', async () => {
    expect((await sh('nfs-cat', [nfs('/ro/fixed.txt')])).stdout).toBe('fixed\n');
    const w = await sh('nfs-cp', [join(dir, 'local', 'up.txt'), nfs('/ro/new.txt', '&uid=0')]);
    expect(w.code).not.toBe(0);
    const other = await sh('nfs-ls', [nfs('/elsewhere/')]);
    expect(other.code).not.toBe(0);
    expect(other.stderr + other.stdout).toMatch(/NFS4ERR_(NOENT|ACCESS|PERM|WRONGSEC)/);
  });

  it('restarts a killed ganesha and clients reconnect', async () => {
    const server = (await agent.status()).exports[0]!.details!['server'] as { pid: number; restarts: number };
    process.kill(server.pid, 'SIGKILL');
    await agent.waitFor((x) => {
      const sv = x.exports[0]!.details!['server'] as { restarts: number; health: string };
      return sv.restarts === server.restarts + 1 && sv.health === 'ok';
    }, 'ganesha restart');
    expect((await sh('nfs-cat', [nfs('/data/hello.txt')])).stdout).toBe('hello over nfs\n');
  });

  it('restarts a killed rpcbind, and ganesha registers NFSv3 with it again', async () => {
    const before = (await agent.status()).exports[0]!.details!['rpcbind'] as { pid: number; owned: boolean };
    expect(before.owned).toBe(true);
    process.kill(before.pid, 'SIGKILL');
    await agent.waitFor((x) => {
      const r = x.exports[0]!.details!['rpcbind'] as { pid: number; health: string };
      return r.pid !== before.pid && r.health === 'ok' && x.exports[0]!.health === 'ok';
    }, 'rpcbind restart');
    let ls = await sh('nfs-ls', [nfs3('/data/')]);
    for (let i = 0; i < 50 && ls.code !== 0; i++) {
      await new Promise((r) => setTimeout(r, 200));
      ls = await sh('nfs-ls', [nfs3('/data/')]);
    }
    expect(ls.code, ls.stderr).toBe(0);
    expect(ls.stdout).toMatch(/hello\.txt/);
  });

  it('stops on SIGTERM leaving nothing behind, rpcbind included', async () => {
    const rpcbind = (await agent.status()).exports[0]!.details!['rpcbind'] as { pid?: number; owned: boolean };
    expect(await agent.stop()).toBe(0);
    expect(await leftovers(agent.runtimeDir)).toEqual([]);
    if (rpcbind.owned) expect(await processGone(rpcbind.pid!)).toBe(true);
  });
});
