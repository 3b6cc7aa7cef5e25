/**
 * The agent reports endpoints as the guest sees them (0.0.0.0:445 ...). The user reaches them through
 * the hypervisor's forwards: same protocol and path, the host's address and forwarded port.
 */
import type { ExportStatus } from '../../shared/src/protocol.js';
import type { Reachable } from './hypervisors/backend.js';

export interface HostEndpoint {
  name: string;
  protocol: 'smb' | 'nfs' | 'iscsi';
  health: string;
  error?: string;
  address: string;
  port: number;
  /** Share name, export path or IQN. */
  path: string;
  lun?: number;
  url: string;
}

export function translateEndpoint(exp: ExportStatus, reach: Reachable): HostEndpoint | undefined {
  const ep = exp.endpoint;
  if (!ep) return undefined;
  const port = reach.ports[ep.protocol];
  if (!port) return undefined;
  const host = reach.address.includes(':') ? `[${reach.address}]` : reach.address;
  const base: HostEndpoint = { name: exp.name, protocol: ep.protocol, health: exp.health, address: reach.address, port, path: ep.path, url: '' };
  if (exp.error) base.error = exp.error;
  if (ep.protocol === 'iscsi') {
    // The guest URL ends in /IQN/LUN; keep its LUN.
    const lun = Number(/\/(\d+)\/?$/.exec(ep.url)?.[1] ?? 1);
    return { ...base, lun, url: `iscsi://${host}:${port}/${ep.path}/${lun}` };
  }
  const path = ep.protocol === 'nfs' ? (ep.path.startsWith('/') ? ep.path : `/${ep.path}`) : ep.path.replace(/^\/+/, '');
  return { ...base, path, url: `${ep.protocol}://${host}:${port}/${path.replace(/^\//, '')}` };
}

export function translateEndpoints(exports: ExportStatus[], reach: Reachable): HostEndpoint[] {
  return exports.map((e) => translateEndpoint(e, reach)).filter((e): e is HostEndpoint => e !== undefined);
}

/** Command lines that reach an endpoint with this machine's user-space clients (no kernel support needed). */
export function reachCommands(ep: HostEndpoint, user: string): string[] {
  switch (ep.protocol) {
    case 'smb':
      return [`smbclient //${ep.address}/${ep.path} -p ${ep.port} -U ${user} -c 'ls'      # password: prompted, or PASSWD=... in the environment`];
    case 'nfs':
      return [
        `nfs-ls 'nfs://${ep.address}${ep.path}?version=4&nfsport=${ep.port}'`,
        `nfs-cat 'nfs://${ep.address}${ep.path}/FILE?version=4&nfsport=${ep.port}'`,
      ];
    case 'iscsi':
      return [
        `LIBISCSI_CHAP_USERNAME=${user} LIBISCSI_CHAP_PASSWORD=... iscsi-inq ${ep.url}`,
        `LIBISCSI_CHAP_USERNAME=${user} LIBISCSI_CHAP_PASSWORD=... qemu-img convert -p -O raw ${ep.url} copy.img`,
      ];
  }
}
