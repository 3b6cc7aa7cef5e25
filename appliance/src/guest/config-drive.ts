/**
 * Inside the appliance: find the config drive the host attached and apply it. The drive is the virtio
 * disk whose serial is `bridge-config`; on hypervisors that cannot set a serial, the first small disk
 * that starts with the magic line. Everything it holds goes to tmpfs (/run, and /root on the
 * in-memory root overlay): the authorized key, the hostname, sshd's port and the agent configuration.
 */
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import type { GuestConfig } from '../../../shared/src/config-drive.js';
import { BridgeError } from '../../../shared/src/errors.js';

/*
 * This file runs on the boot path under emulation, where importing zod alone costs ~4.6 s (measured
 * under TCG here), so it reads the drive's framing itself instead of calling decodeConfigDrive(): the
 * same magic line, length, JSON and SHA-256 (config-drive.test.ts checks both agree), plus the few
 * fields boot needs. The agent configuration inside is validated in full by `bridge-agent serve`.
 */
export const CONFIG_DRIVE_MAGIC = 'BRIDGE-CONFIG-DRIVE v1\n';
export const CONFIG_DRIVE_SIZE = 1024 * 1024;
const NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
const KEY = /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-\S+) [A-Za-z0-9+/=]+( .*)?$/;

export const CONFIG_DRIVE_SERIAL = 'bridge-config';
/** Disks larger than this are sources, not config drives: the magic scan never reads them. */
const MAX_SCAN_BYTES = 64 * 1024 * 1024;

export interface GuestPaths {
  /** sysfs root (tests point these at a fake tree). */
  sys: string;
  dev: string;
  /** Prefix of every file written (`/` in the appliance). */
  root: string;
}

export const APPLIANCE_PATHS: GuestPaths = { sys: '/sys', dev: '/dev', root: '/' };

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

/** Block devices that carry a serial (virtio-blk exposes /sys/block/X/serial; SCSI disks device/serial). */
export function blockSerials(paths: GuestPaths = APPLIANCE_PATHS): Map<string, string> {
  const out = new Map<string, string>();
  let names: string[] = [];
  try {
    names = readdirSync(join(paths.sys, 'block'));
  } catch {
    return out;
  }
  for (const name of names.sort()) {
    const serial = readText(join(paths.sys, 'block', name, 'serial')) ?? readText(join(paths.sys, 'block', name, 'device', 'serial'));
    if (serial) out.set(name, serial);
  }
  return out;
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
    return parseConfigDrive(readHead(device, CONFIG_DRIVE_SIZE));
  } catch (e) {
    if (e instanceof BridgeError) throw new BridgeError(e.code, `${device}: ${e.message}`);
    throw e;
  }
}

/** The drive's bytes → its configuration: framing and checksum, then the fields boot relies on. */
export function parseConfigDrive(data: Buffer): GuestConfig {
  const magic = Buffer.from(CONFIG_DRIVE_MAGIC, 'ascii');
  if (!data.subarray(0, magic.length).equals(magic)) throw new BridgeError('EINVAL', 'not a bridge config drive (magic line missing)');
  const nl = data.indexOf(0x0a, magic.length);
  const length = Number(data.subarray(magic.length, nl).toString('ascii'));
  if (nl < 0 || !Number.isSafeInteger(length) || length <= 0 || nl + 1 + length > data.length) throw new BridgeError('EINVAL', 'config drive: bad length');
  const json = data.subarray(nl + 1, nl + 1 + length);
  const digest = data.subarray(nl + 2 + length, nl + 2 + length + 64).toString('ascii');
  if (createHash('sha256').update(json).digest('hex') !== digest) throw new BridgeError('EIO', 'config drive: checksum mismatch (corrupt drive)');
  const raw = JSON.parse(json.toString('utf8')) as Partial<GuestConfig>;
  const problems: string[] = [];
  if (raw.version !== 1) problems.push('version: expected 1');
  if (typeof raw.name !== 'string' || !NAME.test(raw.name)) problems.push('name: a hostname of a-z, 0-9 and "-"');
  if (typeof raw.sshAuthorizedKey !== 'string' || !KEY.test(raw.sshAuthorizedKey)) problems.push('sshAuthorizedKey: an OpenSSH public key line');
  const sshPort = raw.sshPort ?? 22;
  if (!Number.isInteger(sshPort) || sshPort < 1 || sshPort > 65535) problems.push('sshPort: a TCP port');
  if (!raw.agent || typeof raw.agent !== 'object') problems.push('agent: the agent configuration object');
  if (problems.length) throw new BridgeError('CONFIG', problems.map((p) => `config drive: ${p}`).join('\n'));
  return { ...raw, sshPort } as GuestConfig;
}

export interface AppliedConfig {
  device: string;
  name: string;
  sshPort: number;
  files: string[];
}

/** Writes what the rest of the boot needs; secrets are not among them (they arrive later over SSH). */
export function applyGuestConfig(config: GuestConfig, device: string, paths: GuestPaths = APPLIANCE_PATHS): AppliedConfig {
  const run = join(paths.root, 'run', 'bridge');
  const ssh = join(paths.root, 'root', '.ssh');
  mkdirSync(run, { recursive: true, mode: 0o755 });
  mkdirSync(ssh, { recursive: true, mode: 0o700 });
  const files: Array<[string, string, number]> = [
    [join(ssh, 'authorized_keys'), config.sshAuthorizedKey.trim() + '\n', 0o600],
    [join(run, 'agent.json'), JSON.stringify(config.agent, null, 2) + '\n', 0o600],
    [join(run, 'hostname'), config.name + '\n', 0o644],
    [join(run, 'ssh-port'), String(config.sshPort) + '\n', 0o644],
    [join(run, 'guest.json'), JSON.stringify({ name: config.name, sshPort: config.sshPort, configDrive: device }) + '\n', 0o644],
  ];
  for (const [path, text, mode] of files) writeFileSync(path, text, { mode });
  return { device, name: config.name, sshPort: config.sshPort, files: files.map((f) => f[0]) };
}
