/**
 * End to end with QEMU/TCG and the real appliance: an ext4 disk made here is exported over SMB, NFS and
 * (as a synthesized FAT32 volume) iSCSI; the files are read back with smbclient, nfs-cat and mtools over a
 * `qemu-img convert iscsi://` copy, using the URLs from `bridge status --json`; the cache size changes
 * live; `bridge stop` leaves nothing running. Skipped when no appliance image has been built.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StatusEntry } from '../../wrapper/src/instance.js';
import { bridge, findManifest, makeEnv, run } from './e2e-helpers.js';

const manifest = findManifest();

describe.skipIf(!manifest)('bridge start/status/stop with the appliance (QEMU TCG)', () => {
  const env = manifest ? makeEnv(manifest) : {};
  const root = env.E2E_ROOT ?? '';
  const name = `e2e-${process.pid}`;
  const password = 'e2e-Pass-1234';
  afterAll(async () => {
    await bridge(['stop', name, '--timeout', '3'], env, 60_000).catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
  });

  const blob = randomBytes(200_000);
  let entry: StatusEntry;
  const url = (p: string): URL => new URL(entry.endpoints.find((e) => e.protocol === p && e.health === 'ok')!.url);

  beforeAll(async () => {
    const tree = join(root, 'tree');
    mkdirSync(join(tree, 'sub'), { recursive: true });
    writeFileSync(join(tree, 'hello.txt'), 'hello from ext4\n');
    writeFileSync(join(tree, 'sub', 'blob.bin'), blob);
    const img = join(root, 'data.img');
    expect((await run('mkfs.ext4', ['-q', '-F', '-d', tree, img, '32M'])).code).toBe(0);
    const pwFile = join(root, 'pw');
    writeFileSync(pwFile, password + '\n', { mode: 0o600 });
    const start = await bridge(
      [
        'start',
        '--name',
        name,
        '--source',
        `disk:${img}`,
        '--export',
        'smb,nfs,iscsi',
        '--fat32',
        '--user',
        'tester',
        '--password-file',
        pwFile,
        '--no-mount',
        '--json',
        '--boot-timeout',
        '300',
      ],
      env,
      420_000,
    );
    expect(start.code, start.stderr).toBe(0);
    expect(start.stdout).not.toContain(password); // a given password is never echoed
    const status = await bridge(['status', '--json'], env);
    expect(status.code, status.stderr).toBe(0);
    entry = (JSON.parse(status.stdout) as StatusEntry[]).find((e) => e.name === name)!;
  }, 600_000);

  it('reports the instance with its exports as host URLs', () => {
    expect(entry).toMatchObject({ state: 'running', hypervisor: 'qemu' });
    expect(entry.uptimeSeconds).toBeGreaterThanOrEqual(0);
    expect(entry.endpoints.map((e) => `${e.protocol}:${e.health}`).sort()).toEqual(['iscsi:ok', 'nfs:ok', 'smb:ok']);
    for (const e of entry.endpoints) expect(e.url).toMatch(new RegExp(`^${e.protocol}://127\\.0\\.0\\.1:\\d+/`));
  });

  it('serves the files over SMB to the right password only', async () => {
    const smb = url('smb');
    const got = join(root, 'got.txt');
    const smbGet = await run('smbclient', [`//${smb.hostname}${smb.pathname}`, '-p', smb.port, '-U', 'tester', '-c', `get hello.txt ${got}`], {
      ...process.env,
      PASSWD: password,
    });
    expect(smbGet.code, smbGet.stderr + smbGet.stdout).toBe(0);
    expect(readFileSync(got, 'utf8')).toBe('hello from ext4\n');
    const wrong = await run('smbclient', [`//${smb.hostname}${smb.pathname}`, '-p', smb.port, '-U', 'tester', '-c', 'ls'], {
      ...process.env,
      PASSWD: 'wrong-password',
    });
    expect(wrong.code).not.toBe(0);
  });

  it('serves the files over NFSv4', async () => {
    const nfs = url('nfs');
    const nfsBase = `nfs://${nfs.hostname}${nfs.pathname}`;
    const cat = await run('nfs-cat', [`${nfsBase}/hello.txt?version=4&nfsport=${nfs.port}`]);
    expect(cat.stdout, cat.stderr).toBe('hello from ext4\n');
    const ls = await run('nfs-ls', [`${nfsBase}/sub?version=4&nfsport=${nfs.port}`]);
    expect(ls.stdout).toContain('blob.bin');
  });

  it('serves the tree as a FAT32 volume over iSCSI (qemu-img copy read with mtools)', async () => {
    const iscsi = entry.endpoints.find((e) => e.protocol === 'iscsi')!;
    const copy = join(root, 'fat.img');
    const conv = await run(
      'qemu-img',
      ['convert', '-O', 'raw', iscsi.url, copy],
      { ...process.env, LIBISCSI_CHAP_USERNAME: 'tester', LIBISCSI_CHAP_PASSWORD: password },
      180_000,
    );
    expect(conv.code, conv.stderr).toBe(0);
    const offset =
      readFileSync(copy)
        .subarray(0, 512)
        .readUInt32LE(446 + 8) * 512;
    const mtype = await run('mtype', ['-i', `${copy}@@${offset}`, '::/hello.txt']);
    expect(mtype.stdout, mtype.stderr).toBe('hello from ext4\n');
    const blobCopy = join(root, 'blob.copy');
    expect((await run('mcopy', ['-i', `${copy}@@${offset}`, '::/sub/blob.bin', blobCopy])).code).toBe(0);
    expect(readFileSync(blobCopy).equals(blob)).toBe(true);
    rmSync(copy);
  });

  it('changes the cache size live', async () => {
    const cfg = await bridge(['config', 'set', 'cache-size', '64M', '--name', name, '--json'], env);
    expect(cfg.code, cfg.stderr).toBe(0);
    expect(JSON.parse(cfg.stdout)).toEqual({ name, cacheSize: 64 * 1024 * 1024 });
  });

  it('stops and leaves nothing running', async () => {
    const stop = await bridge(['stop', name, '--json'], env, 120_000);
    expect(stop.code, stop.stderr).toBe(0);
    const after = JSON.parse((await bridge(['status', '--json'], env)).stdout) as StatusEntry[];
    expect(after.find((e) => e.name === name)).toBeUndefined();
    // Nothing running: a daemonized QEMU may linger as a zombie until PID 1 reaps it, which is not running.
    const ps = await run('ps', ['-eo', 'stat=,args=']);
    expect(ps.stdout.split('\n').filter((l) => l.includes(`bridge-${name}`) && !l.trim().startsWith('Z'))).toEqual([]);
  });
});
