import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostEndpoint } from '../../wrapper/src/endpoints.js';
import { executeMount, mountPlan, mountSupport, unmount, writeIscsiNodeAuth } from '../../wrapper/src/mount.js';
import { FakeRunner } from './fake-runner.js';

const creds = { user: 'bridge', password: "pa ss'word-1", chapSecret: 'chapsecret12' };
const smb: HostEndpoint = { name: 'data', protocol: 'smb', health: 'ok', address: '127.0.0.1', port: 4001, path: 'data', url: 'smb://127.0.0.1:4001/data' };
const nfs: HostEndpoint = { ...smb, name: 'data-nfs', protocol: 'nfs', port: 4002, path: '/data-nfs', url: 'nfs://127.0.0.1:4002/data-nfs' };
const iscsi: HostEndpoint = { ...smb, name: 'data-iscsi', protocol: 'iscsi', port: 4003, path: 'iqn.2026-11.org.bridge:data', lun: 1, url: '' };

let dir: string;
beforeAll(() => (dir = mkdtempSync(join(tmpdir(), 'bridge-mount-'))));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('host mount support', () => {
  it('reads the kernel filesystems and modprobe -n on Linux', async () => {
    const proc = join(dir, 'filesystems');
    writeFileSync(proc, 'nodev\tsysfs\n\text4\nnodev\tfuse\n');
    const r = new FakeRunner('linux', ['modprobe', 'mount.cifs'], (c) => (c.cmd === 'modprobe' ? { code: 1 } : undefined));
    expect(await mountSupport(r, 'smb', proc)).toEqual({ ok: false, reason: expect.stringMatching(/no cifs filesystem/) });
    expect(r.lines()).toContain('modprobe -n cifs');
    writeFileSync(proc, 'nodev\tcifs\n');
    expect(await mountSupport(r, 'smb', proc)).toEqual({ ok: true });
    expect((await mountSupport(r, 'nfs', proc)).reason).toMatch(/no NFSv4 client/);
    expect((await mountSupport(r, 'iscsi', proc)).reason).toMatch(/iscsiadm is missing/);
    expect((await mountSupport(new FakeRunner('darwin'), 'iscsi')).reason).toMatch(/no built-in iSCSI initiator/);
    expect((await mountSupport(new FakeRunner('darwin'), 'smb')).ok).toBe(true);
  });
});

describe('mount plans', () => {
  it('Linux: cifs with a credentials file (no password in arguments), nfs4 with the port, iSCSI with CHAP in the node record', () => {
    const p = mountPlan('linux', smb, creds, '/mnt/data');
    expect(p.steps).toEqual([
      {
        cmd: 'mount',
        args: ['-t', 'cifs', '//127.0.0.1/data', '/mnt/data', '-o', expect.stringMatching(/^port=4001,credentials=\{FILES\}\/cifs.cred,vers=3.0/)],
      },
    ]);
    expect(p.files[0]!.content).toBe(`username=bridge\npassword=${creds.password}\n`);
    expect(mountPlan('linux', nfs, creds, '/mnt/n').steps[0]).toEqual({
      cmd: 'mount',
      args: ['-t', 'nfs4', '-o', 'port=4002,proto=tcp', '127.0.0.1:/data-nfs', '/mnt/n'],
    });
    const i = mountPlan('linux', iscsi, creds, '');
    expect(i.mount).toEqual({ protocol: 'iscsi', target: 'iqn.2026-11.org.bridge:data', portal: '127.0.0.1:4003' });
    expect(JSON.stringify(i.steps.filter((s) => 'cmd' in s))).not.toContain(creds.chapSecret);
  });

  it('macOS mount_smbfs/mount_nfs; Windows PowerShell with secrets on stdin', () => {
    expect(mountPlan('darwin', smb, creds, '/Volumes/d').steps[0]).toEqual({ cmd: 'mount_smbfs', args: ['//bridge@127.0.0.1:4001/data', '/Volumes/d'] });
    expect(mountPlan('darwin', nfs, creds, '/Volumes/n').steps[0]).toEqual({
      cmd: 'mount_nfs',
      args: ['-o', 'vers=4,port=4002,tcp', '127.0.0.1:/data-nfs', '/Volumes/n'],
    });
    expect(() => mountPlan('darwin', iscsi, creds, '')).toThrow(/no built-in iSCSI initiator/);
    const w = mountPlan('win32', smb, creds, 'Z:').steps[0]!;
    expect('cmd' in w && w.args.join(' ')).not.toContain('pa ss');
    expect('input' in w && w.input).toContain(
      "New-SmbMapping -LocalPath 'Z:' -RemotePath '\\\\127.0.0.1\\data' -TcpPort 4001 -UserName 'bridge' -Password 'pa ss''word-1'",
    );
    const wi = mountPlan('win32', iscsi, creds, '').steps[0]!;
    expect('input' in wi && wi.input).toContain(
      "Connect-IscsiTarget -NodeAddress 'iqn.2026-11.org.bridge:data' -TargetPortalAddress '127.0.0.1' -TargetPortalPortNumber 4003 -AuthenticationType ONEWAYCHAP",
    );
  });

  it('executes a plan with a private credentials file that is gone afterwards, and unmounts', async () => {
    let credFile = '';
    let credText = '';
    const r = new FakeRunner('linux', [], (c) => {
      const o = c.args.find((a) => a.includes('credentials='));
      if (o) {
        credFile = /credentials=([^,]+)/.exec(o)![1]!;
        credText = readFileSync(credFile, 'utf8');
      }
      return undefined;
    });
    const m = await executeMount(r, mountPlan('linux', smb, creds, join(dir, 'mnt')));
    expect(m).toEqual({ protocol: 'smb', target: join(dir, 'mnt') });
    expect(credText).toContain('password=');
    expect(() => readFileSync(credFile)).toThrow();
    expect(await unmount(r, m)).toBeUndefined();
    expect(r.lines().at(-1)).toBe(`umount ${join(dir, 'mnt')}`);
    expect(await unmount(new FakeRunner('linux', [], () => ({ code: 32 })), m)).toMatch(/could not unmount/);
  });

  it('writes CHAP into the open-iscsi node record', () => {
    const rec = join(dir, 'nodes', 'iqn.x:y', '127.0.0.1,4003,1');
    mkdirSync(rec, { recursive: true });
    writeFileSync(join(rec, 'default'), 'node.name = iqn.x:y\nnode.session.auth.authmethod = None\n');
    writeIscsiNodeAuth({ iqn: 'iqn.x:y', portal: '127.0.0.1:4003', user: 'u', secret: 's3cret-secret' }, join(dir, 'nodes'));
    const text = readFileSync(join(rec, 'default'), 'utf8');
    expect(text).toBe('node.name = iqn.x:y\nnode.session.auth.authmethod = CHAP\nnode.session.auth.username = u\nnode.session.auth.password = s3cret-secret\n');
    expect(() => writeIscsiNodeAuth({ iqn: 'iqn.x:z', portal: '127.0.0.1:1', user: 'u', secret: 's' }, join(dir, 'nodes'))).toThrow(/found no record/);
  });
});
