/**
 * From the user's sources and export choices to (1) the disks and folder shares the VM gets and (2) the
 * agent configuration written to the config drive. Secrets appear only as {"pushed": NAME} references;
 * `secrets` lists what the host must push over SSH after boot.
 */
import type { AgentConfigInput } from '../../shared/src/config.js';
import { BridgeError } from '../../shared/src/errors.js';
import type { VmDisk, VmShare } from './hypervisors/backend.js';
import { guestEndpoint, type SourceSpec } from './sources.js';

export const PROTOCOLS = ['smb', 'nfs', 'iscsi'] as const;
export type Protocol = (typeof PROTOCOLS)[number];

/** Names of pushed secrets: the contract with the agent (`bridge-agent secret put NAME`). */
export const SECRET = {
  password: 'user-password',
  chap: 'chap-secret',
  passphrase: 'store-passphrase',
  s3AccessKey: 's3-access-key-id',
  s3SecretKey: 's3-secret-access-key',
} as const;

export interface GuestPorts {
  sshPort: number;
  smbPort: number;
  nfsPort: number;
  iscsiPort: number;
}

export interface GuestPlanInput {
  sources: SourceSpec[];
  exports: Protocol[];
  fat32: boolean;
  user: string;
  endpoint?: string;
  cacheSize?: number;
  encrypted: boolean;
  /** The appliance can mount virtfs (9p) folder shares. */
  guestHas9p: boolean;
  backend: { title: string; guestHostAddress: string; forwardedClientAddress: string; canShareFolders: boolean };
  guestPorts: GuestPorts;
}

export interface GuestPlan {
  agent: AgentConfigInput;
  disks: VmDisk[];
  shares: VmShare[];
  secrets: string[];
}

export function parseExports(text: string): Protocol[] {
  const list = text
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  if (!list.length) throw new BridgeError('EINVAL', '--export: expected smb, nfs, iscsi or a comma-separated list');
  for (const p of list)
    if (!(PROTOCOLS as readonly string[]).includes(p)) throw new BridgeError('EINVAL', `--export: unknown protocol "${p}"; expected smb, nfs or iscsi`);
  return [...new Set(list)] as Protocol[];
}

export function planGuest(input: GuestPlanInput): GuestPlan {
  const { backend } = input;
  if (input.fat32 && !input.exports.includes('iscsi')) throw new BridgeError('EINVAL', '--fat32 exports a FAT32 volume over iSCSI: add iscsi to --export');
  const disks: VmDisk[] = [];
  const shares: VmShare[] = [];
  const agentSources: AgentConfigInput['sources'] = [];
  const stages: NonNullable<AgentConfigInput['stages']> = [];
  const exports: NonNullable<AgentConfigInput['exports']> = [];
  const secrets = new Set<string>();
  const share = (s: SourceSpec, hostPath: string, readOnly: boolean): string => {
    if (!backend.canShareFolders) throw new BridgeError('ENOTSUP', `--source ${s.kind}:${hostPath}: host folders are not supported with ${backend.title}`);
    if (!input.guestHas9p)
      throw new BridgeError(
        'ENOTSUP',
        `--source ${s.kind}:${hostPath}: this appliance image has no 9p (virtfs) support, so host folders cannot be shared with ${backend.title}`,
      );
    const tag = `bridge-dir${shares.length + 1}`;
    shares.push({ tag, hostPath, readOnly });
    return `virtfs:${tag}`;
  };
  const cache = input.cacheSize !== undefined ? { size: input.cacheSize } : undefined;

  for (const s of input.sources) {
    // `tree` is what SMB/NFS export; `block` what iSCSI exports (raw), if anything.
    let tree: string | undefined;
    let block: string | undefined;
    switch (s.kind) {
      case 'disk': {
        const serial = `bridge-src${disks.length + 1}`;
        disks.push({ path: s.path, format: 'raw', serial, readOnly: s.readOnly });
        agentSources.push({ kind: 'disk', name: s.name, path: `serial:${serial}`, readOnly: s.readOnly });
        tree = s.name;
        block = s.name;
        break;
      }
      case 'dir':
        agentSources.push({ kind: 'directory', name: s.name, path: share(s, s.path, s.readOnly), readOnly: s.readOnly });
        tree = s.name;
        break;
      case 's3':
      case 'store-dir': {
        const store = s.kind === 's3' ? s.url : `dir:${share(s, s.path, false)}`;
        const src: AgentConfigInput['sources'][number] = { kind: 'store', name: s.name, store, ...(cache ? { cache } : {}) };
        if (s.kind === 's3') {
          if (input.endpoint) Object.assign(src, { endpoint: guestEndpoint(input.endpoint, backend.guestHostAddress) });
          Object.assign(src, { accessKeyId: { pushed: SECRET.s3AccessKey }, secretAccessKey: { pushed: SECRET.s3SecretKey } });
          secrets.add(SECRET.s3AccessKey).add(SECRET.s3SecretKey);
        }
        if (input.encrypted) {
          Object.assign(src, { passphrase: { pushed: SECRET.passphrase } });
          secrets.add(SECRET.passphrase);
        }
        agentSources.push(src);
        block = s.name;
        if (input.exports.some((p) => p !== 'iscsi') || input.fat32) {
          stages.push({ kind: 'mount', name: `${s.name}-fs`, from: s.name });
          tree = `${s.name}-fs`;
        }
        break;
      }
    }
    for (const p of input.exports) {
      if (p === 'smb') {
        exports.push({ kind: 'smb', name: s.name, from: tree!, users: [input.user], hostsAllow: [backend.forwardedClientAddress] });
        secrets.add(SECRET.password);
      } else if (p === 'nfs') {
        exports.push({ kind: 'nfs', name: `${s.name}-nfs`, from: tree!, clients: [backend.forwardedClientAddress] });
      } else {
        let from = block;
        if (input.fat32) {
          stages.push({
            kind: 'fat32',
            name: `${s.name}-fat32`,
            from: tree!,
            label:
              s.name
                .toUpperCase()
                .replace(/[^A-Z0-9]/g, '')
                .slice(0, 11) || 'BRIDGE',
          });
          from = `${s.name}-fat32`;
        }
        if (!from) throw new BridgeError('EINVAL', `--source ${s.name}: iSCSI exports a block device; add --fat32 to export this folder as a FAT32 volume`);
        exports.push({ kind: 'iscsi', name: `${s.name}-iscsi`, from, chap: { user: input.user, secret: { pushed: SECRET.chap } } });
        secrets.add(SECRET.chap);
      }
    }
  }
  const agent: AgentConfigInput = {
    version: 1,
    listen: { address: '0.0.0.0', smbPort: input.guestPorts.smbPort, nfsPort: input.guestPorts.nfsPort, iscsiPort: input.guestPorts.iscsiPort },
    users: secrets.has(SECRET.password) ? [{ name: input.user, password: { pushed: SECRET.password } }] : [],
    sources: agentSources,
    stages,
    exports,
  };
  return { agent, disks, shares, secrets: [...secrets] };
}
