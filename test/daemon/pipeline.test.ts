/**
 * The whole pipeline in one agent: disk sources with partition tables (GPT auto, MBR logical,
 * read-only), a kernel mount of ext4 over a FUSE block file shared over SMB, a FAT32 volume served
 * over iSCSI, a broken source that leaves the rest serving; then kill -9 of the agent and a restart
 * that clears every leftover, and a SIGTERM that leaves nothing.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentStatus } from '../../shared/src/protocol.js';
import { freePort } from '../helpers/ports.js';
import { AgentProcess, leftovers, processGone, sh } from './agent-process.js';
import { gptDisk, mbrDisk, wholeExt4 } from './disk-images.js';

const USER = 'bridgepipe';
const PW = 'pipe-pass-1';
const CHAP = 'pipe-chap-secret';

describe('agent pipeline', () => {
  let dir = '';
  let agent: AgentProcess;
  let smbPort = 0;
  let iscsiPort = 0;
  /** Loop devices of the agent that was killed: none may stay attached to its files. */
  let oldLoops: string[] = [];
  const images = (): string[] => ['gpt.img', 'mbr.img', 'whole.img'].map((f) => join(dir, f));
  const src = (s: AgentStatus, name: string): AgentStatus['sources'][number] => [...s.sources, ...s.stages].find((x) => x.name === name)!;
  const smb = (share: string, cmd: string): ReturnType<typeof sh> =>
    sh('smbclient', [`//127.0.0.1/${share}`, '-p', String(smbPort), '-U', `${USER}%${PW}`, '-c', `lcd ${join(dir, 'local')}; ${cmd}`]);

  beforeAll(async () => {
    dir = AgentProcess.tempDir('bridge-pipe-');
    smbPort = await freePort();
    iscsiPort = await freePort();
    await gptDisk(join(dir, 'gpt.img'));
    await mbrDisk(join(dir, 'mbr.img'));
    await wholeExt4(join(dir, 'whole.img'), 32, { 'whole.txt': 'on ext4 through FUSE\n' });
    mkdirSync(join(dir, 'local'));
    mkdirSync(join(dir, 'tree'));
    writeFileSync(join(dir, 'tree', 'HELLO.TXT'), 'hello from the fat32 volume\n');
    agent = new AgentProcess(
      dir,
      {
        version: 1,
        runtimeDir: join(dir, 'run'),
        listen: { address: '127.0.0.1', smbPort, iscsiPort },
        users: [{ name: USER, password: { env: 'PIPE_PW' } }],
        sources: [
          { kind: 'disk', name: 'gpt', path: join(dir, 'gpt.img') },
          { kind: 'disk', name: 'mbr', path: join(dir, 'mbr.img'), partition: 5, readOnly: true },
          { kind: 'disk', name: 'bad', path: join(dir, 'gpt.img'), partition: 9 },
          { kind: 'file', name: 'whole', path: join(dir, 'whole.img') },
          { kind: 'directory', name: 'tree', path: join(dir, 'tree') },
        ],
        stages: [
          { kind: 'mount', name: 'wholefs', from: 'whole' },
          { kind: 'fat32', name: 'fat', from: 'tree', size: '64M', label: 'PIPE' },
        ],
        exports: [
          { kind: 'smb', name: 'gpt', from: 'gpt', users: [USER] },
          { kind: 'smb', name: 'fuse', from: 'wholefs', users: [USER] },
          { kind: 'smb', name: 'bad', from: 'bad', users: [USER] },
          { kind: 'iscsi', name: 'fat', from: 'fat', chap: { user: 'fatuser', secret: { env: 'PIPE_CHAP' } } },
        ],
      },
      { PIPE_PW: PW, PIPE_CHAP: CHAP },
    );
    await agent.start();
  });

  afterAll(async () => {
    await agent?.stop();
    await sh('userdel', [USER]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('mounts partitions found in GPT and MBR tables; a bad one fails alone with a clear error', async () => {
    const s = await agent.status();
    expect(s.ready).toBe(true);
    expect(src(s, 'gpt')).toMatchObject({ health: 'ok', details: { partition: 2, fstype: 'ext4' } });
    expect(src(s, 'mbr')).toMatchObject({ health: 'ok', details: { partition: 5, readOnly: true } });
    expect(src(s, 'bad').health).toBe('failed');
    expect(src(s, 'bad').error).toMatch(/source "bad".*has no partition 9 \(it has 1, 2\)/);
    expect(s.exports.find((e) => e.name === 'bad')!.health).toBe('failed');
    const mbrMount = src(s, 'mbr').details!['mountpoint'] as string;
    expect(readFileSync(join(mbrMount, 'mbr.txt'), 'utf8')).toBe('in mbr logical 5\n');
    const get = await smb('gpt', 'get gpt.txt');
    expect(get.code, get.stderr).toBe(0);
    expect(readFileSync(join(dir, 'local', 'gpt.txt'), 'utf8')).toBe('in gpt partition 2\n');
  });

  it('shares ext4 mounted from a FUSE block file over SMB, read and write', async () => {
    const s = await agent.status();
    expect(src(s, 'wholefs')).toMatchObject({ health: 'ok', details: { fstype: 'ext4', partition: 'whole' } });
    expect(src(s, 'whole').details!['file']).toMatch(/blocks\/whole\/disk\.img$/);
    const get = await smb('fuse', 'get whole.txt');
    expect(get.code, get.stderr).toBe(0);
    expect(readFileSync(join(dir, 'local', 'whole.txt'), 'utf8')).toBe('on ext4 through FUSE\n');
    writeFileSync(join(dir, 'local', 'new.txt'), 'written over smb\n');
    const put = await smb('fuse', 'put new.txt; get new.txt back.txt');
    expect(put.code, put.stderr).toBe(0);
    expect(readFileSync(join(dir, 'local', 'back.txt'), 'utf8')).toBe('written over smb\n');
  });

  it('serves the FAT32 volume over iSCSI', async () => {
    const out = join(dir, 'fat.raw');
    const conv = await sh('qemu-img', ['convert', '-O', 'raw', `iscsi://fatuser%${CHAP}@127.0.0.1:${iscsiPort}/iqn.2026-11.org.bridge:fat/1`, out]);
    expect(conv.code, conv.stderr).toBe(0);
    const parts = JSON.parse((await sh('sfdisk', ['--json', out])).stdout) as { partitiontable: { partitions: { start: number }[] } };
    const start = parts.partitiontable.partitions[0]!.start * 512;
    const type = await sh('mtype', ['-i', `${out}@@${start}`, '::/HELLO.TXT']);
    expect(type.stdout).toBe('hello from the fat32 volume\n');
    rmSync(out);
  });

  it('after kill -9 of the agent, the next start clears every leftover', async () => {
    const before = await agent.status();
    const tgtdPid = (before.exports.find((e) => e.name === 'fat')!.details!['server'] as { pid: number }).pid;
    oldLoops = ['gpt', 'mbr', 'wholefs'].map((n) => src(before, n).details!['loop'] as string);
    await agent.stop('SIGKILL');
    const stale = await leftovers(agent.runtimeDir, images());
    expect(stale.some((l) => l.startsWith('mount:'))).toBe(true);
    expect(stale.some((l) => l.startsWith('loop:'))).toBe(true);
    await agent.start();
    expect(agent.log).toMatch(/cleared leftover of a previous agent/);
    expect(await processGone(tgtdPid)).toBe(true);
    const s = await agent.status();
    expect(s.ready).toBe(true);
    expect(s.exports.filter((e) => e.health === 'ok').map((e) => e.name)).toEqual(['gpt', 'fuse', 'fat']);
    // The share over FUSE works again (what was only in the page cache at the kill is lost, as on a power cut).
    const put = await smb('fuse', 'put new.txt; get whole.txt again.txt');
    expect(put.code, put.stderr).toBe(0);
  });

  it('stops on SIGTERM with no mount, loop device or server left', async () => {
    expect(await agent.stop()).toBe(0);
    expect(await leftovers(agent.runtimeDir, images())).toEqual([]);
    // After a FUSE unmount a loop device's backing file reads "/disk.img": ours must be gone too.
    const loops = (await sh('losetup', ['-a'])).stdout.split('\n');
    expect(loops.filter((l) => oldLoops.some((d) => l.startsWith(`${d}:`)) && /\(\/disk\.img\)/.test(l))).toEqual([]);
    // A clean stop wrote everything back through the FUSE file: the image is consistent and has the file.
    const fsck = await sh('e2fsck', ['-fn', join(dir, 'whole.img')]);
    expect(fsck.code, fsck.stdout).toBe(0);
    const cat = await sh('debugfs', ['-R', 'cat /new.txt', join(dir, 'whole.img')]);
    expect(cat.stdout).toBe('written over smb\n');
  });
});
