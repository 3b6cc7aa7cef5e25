/**
 * Mounting exports on the host. Linux: `mount -t cifs|nfs4`, iscsiadm; macOS: mount_smbfs/mount_nfs
 * (no built-in iSCSI initiator); Windows: New-SmbMapping / iSCSI cmdlets. Where the host cannot (no
 * cifs/nfs/iscsi in its kernel, like the development machine), the result says so and the caller prints
 * how to reach the export with user-space clients instead. Passwords go through 0600 files or stdin.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BridgeError, errorMessage } from '../../shared/src/errors.js';
import type { HostEndpoint } from './endpoints.js';
import type { CommandRunner } from './runner.js';
import type { HostMount } from './state.js';

export interface Support {
  ok: boolean;
  reason?: string;
}

/** Can this host mount the protocol? Checks the kernel (Linux) and the client programs. */
export async function mountSupport(runner: CommandRunner, protocol: HostEndpoint['protocol'], procFilesystems = '/proc/filesystems'): Promise<Support> {
  switch (runner.platform) {
    case 'linux': {
      const fs = existsSync(procFilesystems) ? readFileSync(procFilesystems, 'utf8') : '';
      const kernelHas = async (fsName: string, module: string): Promise<boolean> =>
        new RegExp(`\\b${fsName}\\b`).test(fs) ||
        (runner.which('modprobe') !== undefined && (await runner.run('modprobe', ['-n', module], { check: false })).code === 0);
      if (protocol === 'smb') {
        if (!(await kernelHas('cifs', 'cifs')))
          return { ok: false, reason: 'this kernel has no cifs filesystem (not in /proc/filesystems, modprobe -n cifs fails)' };
        if (!runner.which('mount.cifs')) return { ok: false, reason: 'mount.cifs is missing (Debian: cifs-utils)' };
        return { ok: true };
      }
      if (protocol === 'nfs') {
        if (!(await kernelHas('nfs4', 'nfsv4')))
          return { ok: false, reason: 'this kernel has no NFSv4 client (not in /proc/filesystems, modprobe -n nfsv4 fails)' };
        if (!runner.which('mount.nfs4') && !runner.which('mount.nfs')) return { ok: false, reason: 'mount.nfs is missing (Debian: nfs-common)' };
        return { ok: true };
      }
      if (!runner.which('iscsiadm')) return { ok: false, reason: 'iscsiadm is missing (Debian: open-iscsi)' };
      if (!(await kernelHas('iscsi_tcp', 'iscsi_tcp'))) return { ok: false, reason: 'this kernel has no iSCSI initiator (modprobe -n iscsi_tcp fails)' };
      return { ok: true };
    }
    case 'darwin':
      if (protocol === 'iscsi') return { ok: false, reason: 'macOS has no built-in iSCSI initiator: use SMB (--export smb) or a third-party initiator' };
      return { ok: true };
    case 'win32':
      if (protocol === 'nfs' && !runner.which('mount.exe')) return { ok: false, reason: 'Windows "Client for NFS" is not installed (mount.exe missing)' };
      return { ok: true };
    default:
      return { ok: false, reason: `mounting is not implemented on ${runner.platform}` };
  }
}

export interface Credentials {
  user: string;
  password: string;
  chapSecret: string;
}

export interface MountStep {
  cmd: string;
  args: string[];
  /** stdin (scripts and passwords go here, never in args). */
  input?: string;
}

/** open-iscsi keeps CHAP settings in its node record; we write them there instead of `iscsiadm -v SECRET`. */
export interface IscsiAuthStep {
  iscsiNodeAuth: { iqn: string; portal: string; user: string; secret: string };
}

export interface MountPlan {
  mount: HostMount;
  /** Private files written before the steps and removed after (e.g. a cifs credentials file). */
  files: { name: string; content: string }[];
  steps: (MountStep | IscsiAuthStep)[];
}

const psq = (s: string): string => `'${s.replace(/'/g, "''")}'`;

/** The commands that mount one endpoint (pure: unit-tested). `{FILES}` in an argument is the private file dir. */
export function mountPlan(platform: NodeJS.Platform, ep: HostEndpoint, creds: Credentials, mountpoint: string): MountPlan {
  const portal = `${ep.address}:${ep.port}`;
  if (platform === 'linux') {
    if (ep.protocol === 'smb')
      return {
        mount: { protocol: 'smb', target: mountpoint },
        files: [{ name: 'cifs.cred', content: `username=${creds.user}\npassword=${creds.password}\n` }],
        steps: [
          {
            cmd: 'mount',
            args: [
              '-t',
              'cifs',
              `//${ep.address}/${ep.path}`,
              mountpoint,
              '-o',
              `port=${ep.port},credentials={FILES}/cifs.cred,vers=3.0,uid=${process.getuid?.() ?? 0}`,
            ],
          },
        ],
      };
    if (ep.protocol === 'nfs')
      return {
        mount: { protocol: 'nfs', target: mountpoint },
        files: [],
        steps: [{ cmd: 'mount', args: ['-t', 'nfs4', '-o', `port=${ep.port},proto=tcp`, `${ep.address}:${ep.path}`, mountpoint] }],
      };
    // iSCSI: discovery and login carry no secret; CHAP goes into the node record file.
    return {
      mount: { protocol: 'iscsi', target: ep.path, portal },
      files: [],
      steps: [
        { cmd: 'iscsiadm', args: ['-m', 'discovery', '-t', 'sendtargets', '-p', portal] },
        { iscsiNodeAuth: { iqn: ep.path, portal, user: creds.user, secret: creds.chapSecret } },
        { cmd: 'iscsiadm', args: ['-m', 'node', '-T', ep.path, '-p', portal, '--login'] },
      ],
    };
  }
  if (platform === 'darwin') {
    if (ep.protocol === 'smb')
      // mount_smbfs reads the password from the terminal when the URL has none.
      return {
        mount: { protocol: 'smb', target: mountpoint },
        files: [],
        steps: [{ cmd: 'mount_smbfs', args: [`//${creds.user}@${ep.address}:${ep.port}/${ep.path}`, mountpoint] }],
      };
    if (ep.protocol === 'nfs')
      return {
        mount: { protocol: 'nfs', target: mountpoint },
        files: [],
        steps: [{ cmd: 'mount_nfs', args: ['-o', `vers=4,port=${ep.port},tcp`, `${ep.address}:${ep.path}`, mountpoint] }],
      };
    throw new BridgeError('ENOTSUP', 'macOS has no built-in iSCSI initiator: use SMB (--export smb)');
  }
  if (platform === 'win32') {
    const ps = (script: string): MountStep => ({
      cmd: 'powershell.exe',
      args: ['-NoProfile', '-NonInteractive', '-Command', '-'],
      input: `$ErrorActionPreference = 'Stop'\n${script}\n`,
    });
    if (ep.protocol === 'smb')
      // -TcpPort needs Windows 11 24H2 / Server 2025 (SMB over a non-445 port).
      return {
        mount: { protocol: 'smb', target: mountpoint },
        files: [],
        steps: [
          ps(
            `New-SmbMapping -LocalPath ${psq(mountpoint)} -RemotePath ${psq(`\\\\${ep.address}\\${ep.path}`)} -TcpPort ${ep.port} -UserName ${psq(creds.user)} -Password ${psq(creds.password)} -Persistent $false | Out-Null`,
          ),
        ],
      };
    if (ep.protocol === 'nfs')
      return {
        mount: { protocol: 'nfs', target: mountpoint },
        files: [],
        steps: [{ cmd: 'mount.exe', args: ['-o', `anon,port=${ep.port}`, `\\\\${ep.address}${ep.path.replace(/\//g, '\\')}`, mountpoint] }],
      };
    return {
      mount: { protocol: 'iscsi', target: ep.path, portal },
      files: [],
      steps: [
        ps(
          [
            `New-IscsiTargetPortal -TargetPortalAddress ${psq(ep.address)} -TargetPortalPortNumber ${ep.port} | Out-Null`,
            `Connect-IscsiTarget -NodeAddress ${psq(ep.path)} -TargetPortalAddress ${psq(ep.address)} -TargetPortalPortNumber ${ep.port} -AuthenticationType ONEWAYCHAP -ChapUsername ${psq(creds.user)} -ChapSecret ${psq(creds.chapSecret)} | Out-Null`,
          ].join('\n'),
        ),
      ],
    };
  }
  throw new BridgeError('ENOTSUP', `mounting is not implemented on ${platform}`);
}

export async function executeMount(runner: CommandRunner, plan: MountPlan): Promise<HostMount> {
  const dir = plan.files.length ? mkdtempSync(join(tmpdir(), 'bridge-mount-')) : '';
  try {
    for (const f of plan.files) writeFileSync(join(dir, f.name), f.content, { mode: 0o600 });
    if (plan.mount.protocol !== 'iscsi' && runner.platform !== 'win32') mkdirSync(plan.mount.target, { recursive: true });
    for (const s of plan.steps) {
      if ('iscsiNodeAuth' in s) {
        writeIscsiNodeAuth(s.iscsiNodeAuth);
        continue;
      }
      await runner.run(
        s.cmd,
        s.args.map((a) => a.replaceAll('{FILES}', dir)),
        s.input !== undefined ? { input: s.input, timeoutMs: 60_000 } : { timeoutMs: 60_000 },
      );
    }
    return plan.mount;
  } finally {
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

/** Sets CHAP in open-iscsi's record(s) for the target and portal: /etc/iscsi/nodes/IQN/ADDR,PORT,TPGT/default. */
export function writeIscsiNodeAuth(a: IscsiAuthStep['iscsiNodeAuth'], root = '/etc/iscsi/nodes'): void {
  const dir = join(root, a.iqn);
  const prefix = a.portal.replace(':', ',') + ',';
  const records = existsSync(dir) ? readdirSync(dir).filter((d) => d.startsWith(prefix)) : [];
  if (!records.length) throw new BridgeError('ENOENT', `iSCSI discovery found no record for ${a.iqn} at ${a.portal} (looked in ${dir})`);
  for (const r of records) {
    const file = join(dir, r, 'default');
    const kept = readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l && !/^node\.session\.auth\.(authmethod|username|password)\s*=/.test(l));
    kept.push('node.session.auth.authmethod = CHAP', `node.session.auth.username = ${a.user}`, `node.session.auth.password = ${a.secret}`);
    writeFileSync(file, kept.join('\n') + '\n', { mode: 0o600 });
  }
}

/** Unmount / log out; failures are reported but do not stop the rest of `bridge stop`. */
export async function unmount(runner: CommandRunner, m: HostMount): Promise<string | undefined> {
  try {
    if (runner.platform === 'win32') {
      const script =
        m.protocol === 'iscsi'
          ? `Disconnect-IscsiTarget -NodeAddress ${psq(m.target)} -Confirm:$false`
          : `Remove-SmbMapping -LocalPath ${psq(m.target)} -Force`;
      await runner.run('powershell.exe', ['-NoProfile', '-NonInteractive', '-Command', '-'], { input: script });
    } else if (m.protocol === 'iscsi') {
      await runner.run('iscsiadm', ['-m', 'node', '-T', m.target, '-p', m.portal ?? '', '--logout']);
    } else {
      await runner.run('umount', [m.target]);
    }
    return undefined;
  } catch (e) {
    return `could not unmount ${m.target}: ${errorMessage(e)}`;
  }
}
