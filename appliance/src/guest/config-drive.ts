/**
 * Inside the appliance: find the config drive the host attached and apply it. The drive is the virtio
 * disk whose serial is `bridge-config`; on hypervisors that cannot set a serial, the first small disk
 * that starts with the magic line. Everything it holds goes to tmpfs (/run, and /root on the
 * in-memory root overlay): the authorized key, the hostname and the agent configuration.
 * `bridge-agent serve --config-drive` does this itself (one Node process on the boot path).
 */
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CONFIG_DRIVE_MAGIC, CONFIG_DRIVE_SIZE, decodeConfigDrive, type GuestConfig } from '../../../shared/src/config-drive.js';
import { BridgeError } from '../../../shared/src/errors.js';
import { blockSerials } from './disks.js';

export const CONFIG_DRIVE_SERIAL = 'bridge-config';
/** Disks larger than this are sources, not config drives: the magic scan never reads them. */
const MAX_SCAN_BYTES = 64 * 1024 * 1024;

export interface GuestPaths {
  /** sysfs root (tests point these at a fake tree). */
  sys: string;
  dev: string;
  proc: string;
  /** Prefix of every file written (`/` in the appliance). */
  root: string;
}

export const APPLIANCE_PATHS: GuestPaths = { sys: '/sys', dev: '/dev', proc: '/proc', root: '/' };

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function readHead(path: string, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, buf, done, length - done, done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}

/** The config drive's device path: by serial first, then by scanning small disks for the magic line. */
export function findConfigDrive(paths: GuestPaths = APPLIANCE_PATHS): string {
  for (const [name, serial] of blockSerials(paths)) if (serial === CONFIG_DRIVE_SERIAL) return join(paths.dev, name);
  const magic = Buffer.from(CONFIG_DRIVE_MAGIC, 'ascii');
  let names: string[] = [];
  try {
    names = readdirSync(join(paths.sys, 'block')).sort();
  } catch {
    /* no sysfs: nothing to scan */
  }
  for (const name of names) {
    if (/^(loop|ram|zram|sr|nbd)/.test(name)) continue;
    const sectors = Number(readText(join(paths.sys, 'block', name, 'size')) ?? 'NaN');
    if (!(sectors * 512 <= MAX_SCAN_BYTES)) continue;
    try {
      if (readHead(join(paths.dev, name), magic.length).equals(magic)) return join(paths.dev, name);
    } catch {
      /* unreadable device: not ours */
    }
  }
  throw new BridgeError('ENOENT', `no config drive: no disk with serial ${CONFIG_DRIVE_SERIAL} and no small disk starting with the bridge magic`);
}

export function readConfigDrive(device: string): GuestConfig {
  try {
    return decodeConfigDrive(readHead(device, CONFIG_DRIVE_SIZE));
  } catch (e) {
    if (e instanceof BridgeError) throw new BridgeError(e.code, `${device}: ${e.message}`);
    throw e;
  }
}

export interface AppliedConfig {
  device: string;
  name: string;
  sshPort: number;
  files: string[];
}

/** Paths under `root` (tests, `guest init --root`): nothing outside it is touched. */
export function pathsUnder(root: string): GuestPaths {
  return root === '/' ? APPLIANCE_PATHS : { ...APPLIANCE_PATHS, proc: join(root, 'proc'), root };
}

/** Replaces the one key sshd accepts (written beside, then renamed: sshd never reads half a file). */
export function writeAuthorizedKey(key: string, paths: GuestPaths = APPLIANCE_PATHS): string {
  const ssh = join(paths.root, 'root', '.ssh');
  mkdirSync(ssh, { recursive: true, mode: 0o700 });
  const file = join(ssh, 'authorized_keys');
  writeFileSync(file + '.new', key.trim() + '\n', { mode: 0o600 });
  renameSync(file + '.new', file);
  return file;
}

/** The kernel's hostname (what `hostname` prints), written straight to procfs: no process to start. */
export function setHostname(name: string, paths: GuestPaths = APPLIANCE_PATHS): void {
  // recursive mkdir is a no-op on the real procfs; it builds the fake tree of tests and --root.
  mkdirSync(join(paths.proc, 'sys', 'kernel'), { recursive: true });
  writeFileSync(join(paths.proc, 'sys', 'kernel', 'hostname'), name);
  writeFileSync(join(paths.root, 'run', 'bridge', 'hostname'), name + '\n', { mode: 0o644 });
}

/**
 * Writes what the rest of the boot needs; secrets are not among them (they arrive later over SSH).
 * A template drive has no agent configuration: that arrives in `configure`.
 */
export function applyGuestConfig(config: GuestConfig, device: string, paths: GuestPaths = APPLIANCE_PATHS): AppliedConfig {
  const run = join(paths.root, 'run', 'bridge');
  mkdirSync(run, { recursive: true, mode: 0o755 });
  const files = [writeAuthorizedKey(config.sshAuthorizedKey, paths)];
  if (config.agent) {
    writeFileSync(join(run, 'agent.json'), JSON.stringify(config.agent, null, 2) + '\n', { mode: 0o600 });
    files.push(join(run, 'agent.json'));
  }
  const guest = { name: config.name, sshPort: config.sshPort, configDrive: device, template: config.template !== undefined };
  writeFileSync(join(run, 'guest.json'), JSON.stringify(guest) + '\n', { mode: 0o644 });
  setHostname(config.name, paths);
  files.push(join(run, 'guest.json'), join(run, 'hostname'));
  return { device, name: config.name, sshPort: config.sshPort, files };
}
