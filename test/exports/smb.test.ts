/**
 * SMB end to end: the agent serves shares through smbd on 127.0.0.1; smbclient lists, puts and gets,
 * with right and wrong credentials; a pushed password starts a pending share; a changed password
 * applies on reload; a killed smbd is restarted; SIGTERM leaves nothing behind.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync, createReadStream, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/ports.js';
import { AgentProcess, agentCli, leftovers, sh } from '../daemon/agent-process.js';

const BIG = process.env.BRIDGE_BIG_TESTS === '1';
const ROUND_TRIP = (BIG ? 1024 : 256) * 1024 * 1024;
const U1 = 'bridgesmb1';
const U2 = 'bridgesmb2';

async function sha(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

describe('smb export', () => {
  let dir = '';
  let agent: AgentProcess;
  let port = 0;
  const smb = (share: string, user: string, cmd: string, cwd?: string): ReturnType<typeof sh> =>
    sh('smbclient', [`//127.0.0.1/${share}`, '-p', String(port), '-U', user, ...(cwd ? ['-D', '/'] : []), '-c', cwd ? `lcd ${cwd}; ${cmd}` : cmd]);

  beforeAll(async () => {
    dir = AgentProcess.tempDir('bridge-smb-');
    port = await freePort();
    for (const d of ['data', 'ro', 'pend', 'local']) mkdirSync(join(dir, d));
    writeFileSync(join(dir, 'ro', 'readme.txt'), 'read only\n');
    writeFileSync(join(dir, 'pw1'), 'first-pass\n', { mode: 0o600 });
    agent = new AgentProcess(dir, {
      version: 1,
      runtimeDir: join(dir, 'run'),
      listen: { address: '127.0.0.1', smbPort: port },
      users: [
        { name: U1, password: { file: join(dir, 'pw1') } },
        { name: U2, password: { pushed: 'u2pw' } },
      ],
      sources: [
        { kind: 'directory', name: 'data', path: join(dir, 'data') },
        { kind: 'directory', name: 'ro', path: join(dir, 'ro') },
        { kind: 'directory', name: 'pend', path: join(dir, 'pend') },
        { kind: 'directory', name: 'broken', path: join(dir, 'does-not-exist') },
      ],
      exports: [
        { kind: 'smb', name: 'data', from: 'data', users: [U1] },
        { kind: 'smb', name: 'ro', from: 'ro', users: [U1], readOnly: true },
        { kind: 'smb', name: 'pend', from: 'pend', users: [U2] },
        { kind: 'smb', name: 'broken', from: 'broken', users: [U1] },
        { kind: 'smb', name: 'fenced', from: 'data', users: [U1], hostsAllow: ['192.0.2.1'] },
      ],
    });
    await agent.start();
  });

  afterAll(async () => {
    await agent?.stop();
    await sh('userdel', [U1]);
    await sh('userdel', [U2]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('reports every export with its health and endpoint; a broken source does not stop the others', async () => {
    const s = await agent.status();
    expect(s.ready).toBe(true);
    const byName = Object.fromEntries(s.exports.map((e) => [e.name, e]));
    expect(byName['data']!.health).toBe('ok');
    expect(byName['data']!.endpoint).toEqual({ protocol: 'smb', address: '127.0.0.1', port, path: 'data', url: `smb://127.0.0.1:${port}/data` });
    expect(byName['pend']!.health).toBe('starting');
    expect(byName['pend']!.error).toMatch(/pushed secret "u2pw"/);
    expect(byName['broken']!.health).toBe('failed');
    expect(s.sources.find((x) => x.name === 'broken')!.error).toMatch(/source "broken".*does not exist/);
    // Private runtime directory, socket and rendered configs.
    expect(statSync(agent.runtimeDir).mode & 0o777).toBe(0o700);
    expect(statSync(join(agent.runtimeDir, 'control.sock')).mode & 0o777).toBe(0o600);
    expect(statSync(join(agent.runtimeDir, 'smb', 'smb.conf')).mode & 0o777).toBe(0o600);
    // The text form names the same things.
    const text = await agentCli(['status', '--runtime-dir', agent.runtimeDir]);
    expect(text.stdout).toMatch(/READY/);
    expect(text.stdout).toMatch(new RegExp(`ok +smb +data +smb://127.0.0.1:${port}/data`));
  });

  it('lists shares, puts and gets files with the right password', async () => {
    const list = await sh('smbclient', ['-L', '//127.0.0.1', '-p', String(port), '-U', `${U1}%first-pass`]);
    expect(list.stdout).toMatch(/\bdata\s+Disk/);
    expect(list.stdout).toMatch(/\bro\s+Disk/);
    writeFileSync(join(dir, 'local', 'hello.txt'), 'hello over smb\n');
    const put = await smb('data', `${U1}%first-pass`, 'put hello.txt; get hello.txt back.txt', join(dir, 'local'));
    expect(put.code, put.stderr + put.stdout).toBe(0);
    expect(await sha(join(dir, 'data', 'hello.txt'))).toBe(await sha(join(dir, 'local', 'hello.txt')));
    expect(await sha(join(dir, 'local', 'back.txt'))).toBe(await sha(join(dir, 'local', 'hello.txt')));
  });

  it(`round-trips a ${ROUND_TRIP >> 20} MiB file (cmp)`, async () => {
    const local = join(dir, 'local', 'big.bin');
    const r = await sh('sh', ['-c', `head -c ${ROUND_TRIP} /dev/urandom > ${local}`]);
    expect(r.code).toBe(0);
    const t = await smb('data', `${U1}%first-pass`, 'put big.bin; get big.bin big.back', join(dir, 'local'));
    expect(t.code, t.stderr).toBe(0);
    const cmp = await sh('cmp', [local, join(dir, 'local', 'big.back')]);
    expect(cmp.code, cmp.stdout).toBe(0);
    rmSync(local);
    rmSync(join(dir, 'local', 'big.back'));
    rmSync(join(dir, 'data', 'big.bin'));
  });

  it('refuses a wrong password, an unknown user, a host not allowed, and writes to a read-only share', async () => {
    const wrong = await smb('data', `${U1}%not-it`, 'ls');
    expect(wrong.code).not.toBe(0);
    expect(wrong.stdout + wrong.stderr).toMatch(/LOGON_FAILURE/);
    const unknown = await smb('data', 'nobody-here%x', 'ls');
    expect(unknown.code).not.toBe(0);
    expect(unknown.stdout + unknown.stderr).toMatch(/LOGON_FAILURE|ACCESS_DENIED/);
    const fenced = await smb('fenced', `${U1}%first-pass`, 'ls');
    expect(fenced.code).not.toBe(0);
    const noUser = await smb('data', '%', 'ls');
    expect(noUser.code).not.toBe(0);
    const read = await smb('ro', `${U1}%first-pass`, 'get readme.txt ro.txt', join(dir, 'local'));
    expect(read.code, read.stderr).toBe(0);
    const write = await smb('ro', `${U1}%first-pass`, 'put ro.txt new.txt', join(dir, 'local'));
    expect(write.stdout + write.stderr).toMatch(/ACCESS_DENIED|MEDIA_WRITE_PROTECTED/);
  });

  it('starts a pending share when its pushed password arrives, without touching the others', async () => {
    const before = (await agent.status()).exports.find((e) => e.name === 'data')!.details!['server'] as { pid: number };
    const put = await agentCli(['secret', 'put', 'u2pw', '--runtime-dir', agent.runtimeDir], 'second-pass\n');
    expect(put.code, put.stderr).toBe(0);
    expect(put.stdout).not.toMatch(/second-pass/);
    const s = await agent.waitFor((x) => x.exports.find((e) => e.name === 'pend')!.health === 'ok', 'pend share');
    expect((s.exports.find((e) => e.name === 'data')!.details!['server'] as { pid: number }).pid).toBe(before.pid);
    const ls = await smb('pend', `${U2}%second-pass`, 'ls');
    expect(ls.code, ls.stderr + ls.stdout).toBe(0);
    // Secrets never reach the log.
    expect(agent.log).not.toMatch(/second-pass|first-pass/);
  });

  it('applies a changed password on reload', async () => {
    writeFileSync(join(dir, 'pw1'), 'new-pass\n');
    const r = await agentCli(['reload', '--json', '--runtime-dir', agent.runtimeDir]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).restartRequired).toEqual([]);
    expect((await smb('data', `${U1}%new-pass`, 'ls')).code).toBe(0);
    expect((await smb('data', `${U1}%first-pass`, 'ls')).code).not.toBe(0);
  });

  it('restarts a killed smbd and clients connect again', async () => {
    const s = await agent.status();
    const server = s.exports.find((e) => e.name === 'data')!.details!['server'] as { pid: number; restarts: number };
    process.kill(server.pid, 'SIGKILL');
    const after = await agent.waitFor((x) => {
      const sv = x.exports.find((e) => e.name === 'data')!.details!['server'] as { pid: number; restarts: number; health: string };
      return sv.restarts === server.restarts + 1 && sv.health === 'ok';
    }, 'smbd restart');
    expect(after.exports.find((e) => e.name === 'data')!.health).toBe('ok');
    expect((await smb('data', `${U1}%new-pass`, 'ls')).code).toBe(0);
  });

  it('stops on SIGTERM leaving no server, mount or socket', async () => {
    expect(await agent.stop()).toBe(0);
    expect(await leftovers(agent.runtimeDir)).toEqual([]);
    const st = await agentCli(['status', '--runtime-dir', agent.runtimeDir]);
    expect(st.code).not.toBe(0);
    expect(st.stderr).toMatch(/no agent is running/);
  });
});
