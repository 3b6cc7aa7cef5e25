/**
 * iSCSI end to end: the agent serves block devices through their FUSE files as tgt LUNs on
 * 127.0.0.1; libiscsi's tools and qemu-img log in with CHAP (right, wrong, mutual), initiator names
 * are enforced, SYNCHRONIZE CACHE reaches the device's flush, and libiscsi's conformance suite passes
 * on our LUN every test it passes on a plain-file LUN of a tgtd of its own.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/ports.js';
import { AgentProcess, agentCli, leftovers, processGone, sh } from '../daemon/agent-process.js';
import { freeControlPort } from '../../appliance/src/exports/tgt.js';
import { runConformance } from './iscsi-conformance.js';

const IQN_MEM = 'iqn.2026-11.org.bridge:mem';
const IQN_DISK = 'iqn.2026-11.org.bridge.test:disk';
const INIT_A = 'iqn.2026-11.org.test:a';
const INIT_B = 'iqn.2026-11.org.test:b';
const CHAP = 'chap-secret-0123';
const MUTUAL = 'mutual-secret-456';
const DISK_SIZE = 16 * 1024 * 1024;

describe('iscsi export', () => {
  let dir = '';
  let agent: AgentProcess;
  let port = 0;
  const url = (iqn: string, creds = `iuser%${CHAP}`, extra = ''): string => `iscsi://${creds ? creds + '@' : ''}127.0.0.1:${port}/${iqn}/1${extra}`;

  beforeAll(async () => {
    dir = AgentProcess.tempDir('bridge-iscsi-');
    port = await freePort();
    mkdirSync(join(dir, 'secrets'));
    writeFileSync(join(dir, 'secrets', 'mutual'), MUTUAL + '\n');
    writeFileSync(join(dir, 'disk.img'), randomBytes(DISK_SIZE));
    // A tgtadm first on the agent's PATH that records being run: the agent must never run it (it
    // would put CHAP secrets on a command line); it speaks tgtd's protocol itself.
    mkdirSync(join(dir, 'bin'));
    writeFileSync(join(dir, 'bin', 'tgtadm'), `#!/bin/sh\necho "$$" >> ${join(dir, 'tgtadm-ran')}\nexec /usr/sbin/tgtadm "$@"\n`);
    chmodSync(join(dir, 'bin', 'tgtadm'), 0o755);
    agent = new AgentProcess(
      dir,
      {
        version: 1,
        runtimeDir: join(dir, 'run'),
        listen: { address: '127.0.0.1', iscsiPort: port },
        sources: [
          { kind: 'memory', name: 'mem', size: '64M' },
          { kind: 'file', name: 'disk', path: join(dir, 'disk.img') },
          { kind: 'memory', name: 'later', size: '8M' },
        ],
        exports: [
          { kind: 'iscsi', name: 'mem', from: 'mem', chap: { user: 'iuser', secret: { env: 'TEST_CHAP' } } },
          {
            kind: 'iscsi',
            name: 'disk',
            from: 'disk',
            iqn: IQN_DISK,
            readOnly: true,
            chap: { user: 'iuser', secret: { env: 'TEST_CHAP' } },
            mutualChap: { user: 'tgtuser', secret: { file: join(dir, 'secrets', 'mutual') } },
            initiators: [INIT_A],
          },
          { kind: 'iscsi', name: 'later', from: 'later', chap: { user: 'luser', secret: { pushed: 'later-chap' } } },
        ],
      },
      { TEST_CHAP: CHAP, PATH: `${join(dir, 'bin')}:${process.env['PATH'] ?? ''}` },
    );
    await agent.start();
  });

  afterAll(async () => {
    await agent?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('lists targets and answers inquiry and read capacity with the right CHAP secret', async () => {
    const s = await agent.status();
    expect(s.ready).toBe(true);
    const mem = s.exports.find((e) => e.name === 'mem')!;
    expect(mem.health).toBe('ok');
    expect(mem.endpoint).toEqual({ protocol: 'iscsi', address: '127.0.0.1', port, path: IQN_MEM, url: `iscsi://127.0.0.1:${port}/${IQN_MEM}/1` });
    expect(s.exports.find((e) => e.name === 'later')!.health).toBe('starting');
    const ls = await sh('iscsi-ls', ['-s', `iscsi://iuser%${CHAP}@127.0.0.1:${port}`]);
    expect(ls.stdout).toContain(IQN_MEM);
    const inq = await sh('iscsi-inq', [url(IQN_MEM)]);
    expect(inq.code, inq.stderr).toBe(0);
    expect(inq.stdout).toMatch(/DIRECT_ACCESS/);
    const cap = await sh('iscsi-readcapacity16', [url(IQN_MEM)]);
    expect(cap.stdout).toMatch(/Total size:67108864/);
  });

  it('configures tgtd without running tgtadm (no CHAP secret on any command line)', async () => {
    expect((await agent.status()).exports.filter((e) => e.health === 'ok').map((e) => e.name)).toEqual(['mem', 'disk']);
    expect(existsSync(join(dir, 'tgtadm-ran'))).toBe(false);
  });

  it('refuses a wrong CHAP secret and a login without one', async () => {
    const wrong = await sh('iscsi-inq', [url(IQN_MEM, 'iuser%not-the-secret')]);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr + wrong.stdout).toMatch(/Authentication failure/i);
    const none = await sh('iscsi-inq', [url(IQN_MEM, '')]);
    expect(none.code).not.toBe(0);
  });

  it('enforces initiator names and mutual CHAP; qemu-img reads the whole LUN equal to the device', async () => {
    const mutual = `?target_user=tgtuser&target_password=${MUTUAL}`;
    const ok = await sh('iscsi-inq', ['-i', INIT_A, url(IQN_DISK, `iuser%${CHAP}`, mutual)]);
    expect(ok.code, ok.stderr).toBe(0);
    const other = await sh('iscsi-inq', ['-i', INIT_B, url(IQN_DISK, `iuser%${CHAP}`, mutual)]);
    expect(other.code).not.toBe(0);
    const badTarget = await sh('iscsi-inq', ['-i', INIT_A, url(IQN_DISK, `iuser%${CHAP}`, `?target_user=tgtuser&target_password=wrong-target-pw`)]);
    expect(badTarget.code).not.toBe(0);
    const out = join(dir, 'out.raw');
    const conv = await sh('qemu-img', [
      'convert',
      '-O',
      'raw',
      '--image-opts',
      `driver=iscsi,transport=tcp,portal=127.0.0.1:${port},target=${IQN_DISK},lun=1,user=iuser,password-secret=sec0,initiator-name=${INIT_A}`,
      out,
      '--object',
      `secret,id=sec0,data=${CHAP}`,
    ]);
    if (conv.code !== 0) {
      // Older qemu-img spellings: the URL form with the initiator in the query.
      const alt = await sh('qemu-img', ['convert', '-O', 'raw', `${url(IQN_DISK)}?initiator-name=${INIT_A}`, out]);
      expect(alt.code, conv.stderr + alt.stderr).toBe(0);
    }
    const cmp = await sh('cmp', [out, join(dir, 'disk.img')]);
    expect(cmp.code, cmp.stdout).toBe(0);
    // The read-only LUN refuses writes.
    const w = await sh('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', `${url(IQN_DISK)}?initiator-name=${INIT_A}`]);
    expect(w.stdout + w.stderr).toMatch(/fail|denied|read-only|protected|error/i);
  });

  it('delivers SYNCHRONIZE CACHE to the device flush', async () => {
    const flushes = async (): Promise<number> => (await agent.status()).sources.find((x) => x.name === 'mem')!.details!['flushes'] as number;
    const before = await flushes();
    const w = await sh('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 64k', '-c', 'flush', url(IQN_MEM)]);
    expect(w.code, w.stderr).toBe(0);
    expect(await flushes()).toBeGreaterThan(before);
    const r = await sh('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 0 64k', url(IQN_MEM)]);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
  });

  it('starts a pending target when its pushed CHAP secret arrives', async () => {
    const put = await agentCli(['secret', 'put', 'later-chap', '--runtime-dir', agent.runtimeDir], 'later-secret-789');
    expect(put.code, put.stderr).toBe(0);
    await agent.waitFor((s) => s.exports.find((e) => e.name === 'later')!.health === 'ok', 'later target');
    const inq = await sh('iscsi-inq', [`iscsi://luser%later-secret-789@127.0.0.1:${port}/iqn.2026-11.org.bridge:later/1`]);
    expect(inq.code, inq.stderr).toBe(0);
    // A changed secret applies at once: the old one stops working.
    await agentCli(['secret', 'put', 'later-chap', '--runtime-dir', agent.runtimeDir], 'later-secret-new');
    expect((await sh('iscsi-inq', [`iscsi://luser%later-secret-789@127.0.0.1:${port}/iqn.2026-11.org.bridge:later/1`])).code).not.toBe(0);
    expect((await sh('iscsi-inq', [`iscsi://luser%later-secret-new@127.0.0.1:${port}/iqn.2026-11.org.bridge:later/1`])).code).toBe(0);
  });

  it('passes every conformance test on our FUSE-backed LUN that tgtd passes on a plain file', async () => {
    // The peer: a tgtd of our own with a plain 64 MiB file, in the same run.
    const plainPort = await freePort();
    const control = freeControlPort();
    writeFileSync(join(dir, 'plain.img'), Buffer.alloc(0));
    await sh('truncate', ['-s', '64M', join(dir, 'plain.img')]);
    const tgtd: ChildProcess = spawn('tgtd', ['-f', '-C', String(control), '--iscsi', `portal=127.0.0.1:${plainPort}`], { stdio: 'ignore', detached: true });
    const adm = (...a: string[]): ReturnType<typeof sh> => sh('tgtadm', ['-C', String(control), '--lld', 'iscsi', ...a]);
    try {
      for (let i = 0; i < 50 && (await adm('--mode', 'system', '--op', 'show')).code !== 0; i++) await new Promise((r) => setTimeout(r, 100));
      expect((await adm('--mode', 'target', '--op', 'new', '--tid', '1', '-T', 'iqn.2026-11.org.test:plain')).code).toBe(0);
      expect((await adm('--mode', 'logicalunit', '--op', 'new', '--tid', '1', '--lun', '1', '-b', join(dir, 'plain.img'))).code).toBe(0);
      expect((await adm('--mode', 'target', '--op', 'bind', '--tid', '1', '-I', 'ALL')).code).toBe(0);
      const plain = await runConformance(`iscsi://127.0.0.1:${plainPort}/iqn.2026-11.org.test:plain/1`, INIT_A, INIT_B);
      const ours = await runConformance(url(IQN_MEM), INIT_A, INIT_B);
      const regressions = [...plain]
        .filter(([name, o]) => o === 'passed' && ours.get(name) !== 'passed')
        .map(([name]) => `${name}: ${ours.get(name) ?? 'missing'}`);
      expect(regressions).toEqual([]);
      const passed = (m: Map<string, string>): number => [...m.values()].filter((o) => o === 'passed').length;
      expect(passed(ours)).toBeGreaterThanOrEqual(passed(plain));
      expect(passed(plain)).toBeGreaterThan(100);
    } finally {
      await adm('--mode', 'target', '--op', 'delete', '--force', '--tid', '1');
      await adm('--mode', 'system', '--op', 'delete');
      tgtd.kill('SIGTERM');
      await new Promise((r) => (tgtd.exitCode !== null ? r(null) : tgtd.once('exit', r)));
    }
  }, 300_000);

  it('never ran tgtadm, also for pushed and changed secrets', () => {
    expect(existsSync(join(dir, 'tgtadm-ran'))).toBe(false);
  });

  it('restarts a killed tgtd with every target configured again', async () => {
    const s = await agent.status();
    const server = s.exports.find((e) => e.name === 'mem')!.details!['server'] as { pid: number; restarts: number };
    process.kill(server.pid, 'SIGKILL');
    await agent.waitFor((x) => {
      const sv = x.exports.find((e) => e.name === 'mem')!.details!['server'] as { restarts: number; health: string };
      return sv.restarts === server.restarts + 1 && sv.health === 'ok';
    }, 'tgtd restart');
    const inq = await sh('iscsi-inq', [url(IQN_MEM)]);
    expect(inq.code, inq.stderr).toBe(0);
    expect((await sh('iscsi-inq', [`iscsi://luser%later-secret-new@127.0.0.1:${port}/iqn.2026-11.org.bridge:later/1`])).code).toBe(0);
  });

  it('stops on SIGTERM leaving no tgtd, FUSE mount or socket', async () => {
    const pid = ((await agent.status()).exports[0]!.details!['server'] as { pid: number }).pid;
    expect(await agent.stop()).toBe(0);
    expect(await leftovers(agent.runtimeDir)).toEqual([]);
    expect(await processGone(pid)).toBe(true);
  });
});
