import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeConfigDrive, encodeConfigDrive } from '../../shared/src/config-drive.js';
import { parseAgentConfig } from '../../shared/src/config.js';
import type { ExportStatus } from '../../shared/src/protocol.js';
import { resolveCredentials, generateSecret } from '../../wrapper/src/credentials.js';
import { reachCommands, translateEndpoint, translateEndpoints } from '../../wrapper/src/endpoints.js';
import { parseExports, planGuest, type GuestPlanInput } from '../../wrapper/src/guest-config.js';
import { preferred } from '../../wrapper/src/hypervisors/detect.js';
import { allocateForwards } from '../../wrapper/src/ports.js';
import { guestEndpoint, parseSources } from '../../wrapper/src/sources.js';
import { validateName } from '../../wrapper/src/state.js';

let dir: string;
let img: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'bridge-plan-'));
  img = join(dir, 'data.img');
  writeFileSync(img, Buffer.alloc(4096));
  mkdirSync(join(dir, 'tree'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const qemuFacts = { title: 'QEMU', guestHostAddress: '10.0.2.2', forwardedClientAddress: '10.0.2.2', canShareFolders: true };
const ports = { sshPort: 22, smbPort: 445, nfsPort: 2049, iscsiPort: 3260 };
function input(over: Partial<GuestPlanInput>): GuestPlanInput {
  return { sources: [], exports: ['smb'], fat32: false, user: 'bridge', encrypted: false, guestHas9p: false, backend: qemuFacts, guestPorts: ports, ...over };
}

describe('--source specs', () => {
  it('parses disk, store and dir specs with names and read-only flags, making names unique', () => {
    const s = parseSources([`disk:${img}:ro`, `disk:${img}`, 'vol=store:s3://bucket/pfx', `store:dir:${dir}/tree`, `dir:${dir}/tree:ro`]);
    expect(s).toEqual([
      { kind: 'disk', name: 'data', path: img, readOnly: true },
      { kind: 'disk', name: 'data-2', path: img, readOnly: false },
      { kind: 's3', name: 'vol', url: 's3://bucket/pfx' },
      { kind: 'store-dir', name: 'tree', path: join(dir, 'tree') },
      { kind: 'dir', name: 'tree-2', path: join(dir, 'tree'), readOnly: true },
    ]);
  });

  it('names the wrong input in errors', () => {
    expect(() => parseSources(['disk:/nonexistent/x.img'])).toThrow(/disk:\/nonexistent\/x.img: \/nonexistent\/x.img does not exist/);
    expect(() => parseSources(['floppy:a'])).toThrow(/unknown kind "floppy"/);
    expect(() => parseSources(['store:ftp://x'])).toThrow(/expected store:s3:\/\/BUCKET\/PREFIX or store:dir:PATH/);
    expect(() => parseSources([`dir:${img}`])).toThrow(/is not a directory/);
  });

  it('rewrites a host-local S3 endpoint to the NAT host address', () => {
    expect(guestEndpoint('http://127.0.0.1:9000', '10.0.2.2')).toBe('http://10.0.2.2:9000');
    expect(guestEndpoint('http://localhost:9000/', '10.211.55.2')).toBe('http://10.211.55.2:9000/');
    expect(guestEndpoint('https://s3.example.com', '10.0.2.2')).toBe('https://s3.example.com');
    expect(() => guestEndpoint('http://127.0.0.1:9000', 'gateway')).toThrow(/no fixed host address/);
    expect(() => guestEndpoint('not a url', '10.0.2.2')).toThrow(/--endpoint/);
  });
});

describe('guest plan and config drive', () => {
  it('attaches a disk by serial and exports it over SMB, NFS and (with --fat32) iSCSI, secrets only pushed', () => {
    const plan = planGuest(input({ sources: parseSources([`disk:${img}`]), exports: ['smb', 'nfs', 'iscsi'], fat32: true }));
    expect(plan.disks).toEqual([{ path: img, format: 'raw', serial: 'bridge-src1', readOnly: false }]);
    const cfg = parseAgentConfig(plan.agent);
    expect(cfg.sources).toMatchObject([{ kind: 'disk', name: 'data', path: 'serial:bridge-src1' }]);
    expect(cfg.stages).toMatchObject([{ kind: 'fat32', name: 'data-fat32', from: 'data', label: 'DATA' }]);
    expect(cfg.exports).toMatchObject([
      { kind: 'smb', name: 'data', from: 'data', users: ['bridge'], hostsAllow: ['10.0.2.2'] },
      { kind: 'nfs', name: 'data-nfs', from: 'data', clients: ['10.0.2.2'] },
      { kind: 'iscsi', name: 'data-iscsi', from: 'data-fat32', chap: { user: 'bridge', secret: { pushed: 'chap-secret' } } },
    ]);
    expect(cfg.users).toEqual([{ name: 'bridge', password: { pushed: 'user-password' } }]);
    expect(cfg.listen).toEqual({ address: '0.0.0.0', smbPort: 445, nfsPort: 2049, iscsiPort: 3260 });
    expect(plan.secrets.sort()).toEqual(['chap-secret', 'user-password']);
    // The config drive carries it, round trips, and holds no secret value.
    const drive = encodeConfigDrive({
      version: 1,
      name: 'demo',
      sshAuthorizedKey: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake bridge-demo',
      sshPort: 22,
      agent: plan.agent,
    });
    expect(drive.length).toBe(1024 * 1024);
    const back = decodeConfigDrive(drive);
    expect(back.name).toBe('demo');
    expect(back.agent!.exports).toHaveLength(3);
    expect(drive.toString('utf8')).not.toMatch(/"file"|"env"/);
  });

  it('mounts a store for SMB/NFS, exports it raw over iSCSI, and rewrites the endpoint; encrypted stores push the passphrase', () => {
    const plan = planGuest(
      input({ sources: parseSources(['store:s3://b/p']), exports: ['iscsi', 'smb'], endpoint: 'http://127.0.0.1:4568', cacheSize: 1 << 30, encrypted: true }),
    );
    const cfg = parseAgentConfig(plan.agent);
    expect(cfg.sources[0]).toMatchObject({
      kind: 'store',
      name: 'b',
      store: 's3://b/p',
      endpoint: 'http://10.0.2.2:4568',
      passphrase: { pushed: 'store-passphrase' },
      cache: { size: 1 << 30 },
    });
    expect(cfg.stages).toMatchObject([{ kind: 'mount', name: 'b-fs', from: 'b' }]);
    expect(cfg.exports.find((e) => e.kind === 'iscsi')).toMatchObject({ from: 'b' });
    expect(cfg.exports.find((e) => e.kind === 'smb')).toMatchObject({ from: 'b-fs' });
    expect(plan.secrets.sort()).toEqual(['chap-secret', 's3-access-key-id', 's3-secret-access-key', 'store-passphrase', 'user-password']);
  });

  it('shares host folders over virtfs only when the backend and the image can', () => {
    const src = parseSources([`dir:${dir}/tree`]);
    expect(() => planGuest(input({ sources: src }))).toThrow(/no 9p \(virtfs\) support/);
    expect(() => planGuest(input({ sources: src, guestHas9p: true, backend: { ...qemuFacts, title: 'VirtualBox', canShareFolders: false } }))).toThrow(
      /not supported with VirtualBox/,
    );
    const plan = planGuest(input({ sources: src, guestHas9p: true }));
    expect(plan.shares).toEqual([{ tag: 'bridge-dir1', hostPath: join(dir, 'tree'), readOnly: false }]);
    expect(plan.agent.sources[0]).toMatchObject({ kind: 'directory', path: 'virtfs:bridge-dir1' });
    expect(() => planGuest(input({ sources: src, guestHas9p: true, exports: ['iscsi'] }))).toThrow(/add --fat32/);
  });

  it('validates --export, --fat32, names', () => {
    expect(parseExports('smb, NFS,smb')).toEqual(['smb', 'nfs']);
    expect(() => parseExports('smb,afp')).toThrow(/unknown protocol "afp"/);
    expect(() => planGuest(input({ sources: parseSources([`disk:${img}`]), fat32: true }))).toThrow(/add iscsi to --export/);
    expect(validateName('my-vm1')).toBe('my-vm1');
    expect(() => validateName('My_VM')).toThrow(/--name/);
  });
});

describe('credentials', () => {
  it('reads a password file, checks the user, fits CHAP to 12-16 characters, or generates', async () => {
    const f = join(dir, 'pw');
    writeFileSync(f, 'correct-horse1\nignored\n');
    const c = await resolveCredentials({ user: 'alice', passwordFile: f }, {});
    expect(c).toMatchObject({ user: 'alice', password: 'correct-horse1', chapSecret: 'correct-horse1', generated: false, chapGenerated: false });
    writeFileSync(f, 'a-very-long-password-indeed\n');
    const long = await resolveCredentials({ passwordFile: f }, {});
    expect(long.chapSecret).toHaveLength(16);
    expect(long.chapGenerated).toBe(true);
    const gen = await resolveCredentials({}, {});
    expect(gen.generated).toBe(true);
    expect(gen.password).toMatch(/^[A-Za-z0-9]{16}$/);
    expect((await resolveCredentials({}, { BRIDGE_PASSWORD: 'from-env-123' })).password).toBe('from-env-123');
    await expect(resolveCredentials({ user: 'Bad User' }, {})).rejects.toThrow(/--user/);
    await expect(resolveCredentials({ user: 'root' }, {})).rejects.toThrow(/root/);
    writeFileSync(f, 'short\n');
    await expect(resolveCredentials({ passwordFile: f }, {})).rejects.toThrow(/at least 8/);
    expect(new Set(Array.from({ length: 20 }, () => generateSecret())).size).toBe(20);
    expect(readFileSync(f, 'utf8')).toBe('short\n');
  });
});

describe('ports and endpoints', () => {
  it('allocates distinct ports avoiding ones other instances recorded', async () => {
    const seq = [5000, 5000, 5001, 5002, 5002, 5003];
    const f = await allocateForwards(
      [
        { name: 'ssh', guestPort: 22 },
        { name: 'smb', guestPort: 445 },
        { name: 'nfs', guestPort: 2049 },
      ],
      new Set([5001]),
      async () => seq.shift()!,
    );
    expect(f).toEqual([
      { name: 'ssh', hostPort: 5000, guestPort: 22 },
      { name: 'smb', hostPort: 5002, guestPort: 445 },
      { name: 'nfs', hostPort: 5003, guestPort: 2049 },
    ]);
    const real = await allocateForwards(
      [
        { name: 'ssh', guestPort: 22 },
        { name: 'smb', guestPort: 445 },
      ],
      new Set(),
    );
    expect(real[0]!.hostPort).not.toBe(real[1]!.hostPort);
  });

  it("translates the guest's endpoints to the host's forwarded ports", () => {
    const reach = { address: '127.0.0.1', ports: { ssh: 4000, smb: 4001, nfs: 4002, iscsi: 4003 } };
    const exp = (protocol: 'smb' | 'nfs' | 'iscsi', path: string, url: string): ExportStatus => ({
      name: `x-${protocol}`,
      kind: protocol,
      health: 'ok',
      endpoint: { protocol, address: '0.0.0.0', port: protocol === 'smb' ? 445 : protocol === 'nfs' ? 2049 : 3260, path, url },
    });
    const eps = translateEndpoints(
      [
        exp('smb', 'data', 'smb://0.0.0.0:445/data'),
        exp('nfs', '/data-nfs', 'nfs://0.0.0.0:2049/data-nfs'),
        exp('iscsi', 'iqn.2026-11.org.bridge:data', 'iscsi://0.0.0.0:3260/iqn.2026-11.org.bridge:data/1'),
      ],
      reach,
    );
    expect(eps.map((e) => e.url)).toEqual([
      'smb://127.0.0.1:4001/data',
      'nfs://127.0.0.1:4002/data-nfs',
      'iscsi://127.0.0.1:4003/iqn.2026-11.org.bridge:data/1',
    ]);
    expect(reachCommands(eps[1]!, 'bridge')[0]).toBe("nfs-ls 'nfs://127.0.0.1/data-nfs?version=4&nfsport=4002'");
    expect(reachCommands(eps[0]!, 'bridge')[0]).toMatch(/^smbclient \/\/127.0.0.1\/data -p 4001 -U bridge/);
    expect(reachCommands(eps[2]!, 'bridge')[0]).not.toMatch(/PASSWORD=[^.]/);
    expect(translateEndpoint({ name: 'n', kind: 'smb', health: 'starting' }, reach)).toBeUndefined();
    expect(translateEndpoint(exp('nfs', 'x', ''), { address: '127.0.0.1', ports: {} })).toBeUndefined();
  });
});

describe('hypervisor preference', () => {
  const d = (name: 'qemu' | 'virtualbox' | 'vmware' | 'hyperv' | 'parallels', available: boolean, accelerated = available) => ({
    name,
    title: name,
    available,
    accelerated,
    notes: [],
    tested: false,
  });
  it('prefers accelerated QEMU, then the others, then QEMU with TCG', () => {
    expect(preferred([d('qemu', true), d('virtualbox', true)])).toBe('qemu');
    expect(preferred([d('qemu', true, false), d('virtualbox', true)])).toBe('virtualbox');
    expect(preferred([d('qemu', true, false), d('parallels', true), d('hyperv', true)])).toBe('parallels');
    expect(preferred([d('qemu', false), d('virtualbox', false)])).toBe('qemu');
  });
});
