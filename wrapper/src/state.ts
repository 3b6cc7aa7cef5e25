/**
 * Instance state on the host: `${XDG_STATE_HOME:-~/.local/state}/bridge/instances/<name>/` holds
 * state.json (what a later CLI run needs to reach and stop the VM) and the VM's files (console log,
 * config drive, QMP socket). Nothing secret lives there: the SSH private key is kept in
 * `${XDG_CONFIG_HOME:-~/.config}/bridge/keys/<name>/` (0700 dir, 0600 file), passwords only in memory.
 */
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { BridgeError } from '../../shared/src/errors.js';
import type { HostEndpoint } from './endpoints.js';
import type { HypervisorName, PortForward, Reachable, VmRef } from './hypervisors/backend.js';

export const NAME_RE = /^[a-z0-9][a-z0-9-]{0,39}$/;

export function validateName(name: string): string {
  if (!NAME_RE.test(name)) throw new BridgeError('EINVAL', `--name: "${name}" must be 1-40 lowercase letters, digits or "-", starting with a letter or digit`);
  return name;
}

export function stateRoot(): string {
  if (process.env.BRIDGE_STATE_DIR) return process.env.BRIDGE_STATE_DIR;
  return join(process.env.XDG_STATE_HOME || join(homedir(), '.local', 'state'), 'bridge');
}

export function configRoot(): string {
  if (process.env.BRIDGE_CONFIG_DIR) return process.env.BRIDGE_CONFIG_DIR;
  return join(process.env.XDG_CONFIG_HOME || join(homedir(), '.config'), 'bridge');
}

export function instanceDir(name: string): string {
  return join(stateRoot(), 'instances', name);
}

/** Where the console log of a stopped instance is kept. */
export function lastConsoleLog(name: string): string {
  return join(stateRoot(), 'logs', `${name}.console.log`);
}

export function keyDir(name: string): string {
  return join(configRoot(), 'keys', name);
}

export interface HostMount {
  protocol: 'smb' | 'nfs' | 'iscsi';
  /** Mount point (SMB/NFS), or the iSCSI target IQN + portal for logout. */
  target: string;
  portal?: string;
}

export interface InstanceState {
  name: string;
  hypervisor: HypervisorName;
  vm: VmRef;
  forwards: PortForward[];
  reachable?: Reachable;
  image: { version: string; hash: string; manifest: string };
  /** powerButton: the appliance powers off in order on the ACPI power button (no SSH needed to stop). */
  guest: { sshUser: string; powerButton?: boolean };
  /** SHA-256 of the guest's SSH host key, pinned at first contact. */
  hostKeySha256?: string;
  startedAt: string;
  phase: 'starting' | 'running' | 'failed';
  error?: string;
  sources: string[];
  exports: string[];
  user: string;
  endpoints: HostEndpoint[];
  mounts: HostMount[];
}

export function saveState(state: InstanceState): void {
  const dir = instanceDir(state.name);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, 'state.json.tmp');
  writeFileSync(tmp, JSON.stringify(state, null, 2) + '\n', { mode: 0o644 });
  renameSync(tmp, join(dir, 'state.json'));
}

export function loadState(name: string): InstanceState | undefined {
  const file = join(instanceDir(name), 'state.json');
  if (!existsSync(file)) return undefined;
  return JSON.parse(readFileSync(file, 'utf8')) as InstanceState;
}

export function requireState(name: string): InstanceState {
  const s = loadState(name);
  if (!s) throw new BridgeError('ENOENT', `no instance named "${name}" (see: bridge status)`);
  return s;
}

export function listStates(): InstanceState[] {
  const root = join(stateRoot(), 'instances');
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .sort()
    .map((n) => loadState(n))
    .filter((s): s is InstanceState => s !== undefined);
}

export function removeInstance(name: string): void {
  rmSync(instanceDir(name), { recursive: true, force: true });
  rmSync(keyDir(name), { recursive: true, force: true });
}

/** Writes a private file (0600) in a private directory (0700). */
export function writePrivate(dir: string, file: string, content: string | Buffer): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const path = join(dir, file);
  writeFileSync(path, content, { mode: 0o600 });
  chmodSync(path, 0o600);
  return path;
}
