/**
 * Disks by serial inside the appliance (no udev): virtio-blk exposes /sys/block/X/serial, SCSI disks
 * /sys/block/X/device/serial. A restored template copy gets its source disks hot-plugged just before
 * `configure`, so the agent waits for the serials its configuration names before opening them.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AgentConfig } from '../../../shared/src/config.js';
import type { Logger } from '../../../shared/src/logger.js';

export interface SysPaths {
  sys: string;
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** Block devices that carry a serial: name → serial. */
export function blockSerials(paths: SysPaths = { sys: '/sys' }): Map<string, string> {
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

/** The `serial:NAME` disks of a configuration: serial → source name. */
export function wantedSerials(config: Pick<AgentConfig, 'sources'>): Map<string, string> {
  const out = new Map<string, string>();
  for (const s of config.sources) if (s.kind === 'disk' && s.path.startsWith('serial:')) out.set(s.path.slice('serial:'.length), s.name);
  return out;
}

/**
 * Waits until every wanted serial is present; returns the missing ones after `timeoutMs` (logged,
 * naming disk and source: the source itself then fails with "no disk with serial ...").
 */
export async function waitForSerials(wanted: Map<string, string>, timeoutMs: number, log: Logger, paths: SysPaths = { sys: '/sys' }): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const present = new Set(blockSerials(paths).values());
    const missing = [...wanted.keys()].filter((s) => !present.has(s));
    if (!missing.length) return [];
    if (Date.now() >= deadline) {
      for (const s of missing) log.error('disk did not appear', { serial: s, source: wanted.get(s), waitedMs: timeoutMs });
      return missing;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The device nodes the agent needs from modules bridge-init loads in the background. */
export const MODULE_DEVICES = ['/dev/fuse', '/dev/loop-control'];

/** Waits until the paths exist; returns the missing ones after `timeoutMs` (logged). */
export async function waitForPaths(paths: string[], timeoutMs: number, log: Logger): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const missing = paths.filter((p) => !existsSync(p));
    if (!missing.length || Date.now() >= deadline) {
      for (const p of missing) log.error('device node did not appear', { path: p, waitedMs: timeoutMs });
      return missing;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}
