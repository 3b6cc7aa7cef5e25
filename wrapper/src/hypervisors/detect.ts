/**
 * Which hypervisors this host has, and which one `bridge start` uses.
 * Preference (documented in docs/wrapper.md): QEMU with hardware acceleration, then VirtualBox, VMware,
 * Parallels, Hyper-V when present, then QEMU with TCG (software, slow but everywhere).
 */
import { BridgeError } from '../../../shared/src/errors.js';
import type { CommandRunner } from '../runner.js';
import { HYPERVISORS, type Detection, type HypervisorBackend, type HypervisorName } from './backend.js';
import { HyperVBackend } from './hyperv.js';
import { ParallelsBackend } from './parallels.js';
import { QemuBackend, type QemuContext } from './qemu.js';
import { VirtualBoxBackend } from './virtualbox.js';
import { VmwareBackend } from './vmware.js';

export const HYPERVISOR_CHOICES = ['auto', 'qemu', 'kvm', ...HYPERVISORS.filter((h) => h !== 'qemu')] as const;
export type HypervisorChoice = (typeof HYPERVISOR_CHOICES)[number];

export interface DetectOptions extends QemuContext {
  runner: CommandRunner;
}

export function makeBackend(name: HypervisorName, opts: DetectOptions): HypervisorBackend {
  switch (name) {
    case 'qemu':
      return new QemuBackend(opts);
    case 'virtualbox':
      return new VirtualBoxBackend(opts);
    case 'vmware':
      return new VmwareBackend(opts);
    case 'hyperv':
      return new HyperVBackend(opts);
    case 'parallels':
      return new ParallelsBackend(opts);
  }
}

export interface HostReport {
  os: NodeJS.Platform;
  arch: string;
  hypervisors: Detection[];
  /** What `--hypervisor auto` picks. */
  choice: HypervisorName;
}

export async function detectAll(opts: DetectOptions): Promise<HostReport> {
  const hypervisors = await Promise.all(HYPERVISORS.map((h) => makeBackend(h, opts).detect()));
  return { os: opts.runner.platform, arch: process.arch, hypervisors, choice: preferred(hypervisors) };
}

export function preferred(found: Detection[]): HypervisorName {
  const by = (n: HypervisorName): Detection | undefined => found.find((d) => d.name === n && d.available);
  if (by('qemu')?.accelerated) return 'qemu';
  for (const n of ['virtualbox', 'vmware', 'parallels', 'hyperv'] as const) if (by(n)) return n;
  return 'qemu';
}

/** Resolves `--hypervisor` to a backend whose detection says it is available. */
export async function chooseBackend(choice: HypervisorChoice, opts: DetectOptions): Promise<{ backend: HypervisorBackend; detection: Detection }> {
  let name: HypervisorName;
  let ctx = opts;
  if (choice === 'auto') name = (await detectAll(opts)).choice;
  else if (choice === 'kvm') {
    name = 'qemu';
    ctx = { ...opts, accel: 'kvm' };
  } else if ((HYPERVISORS as readonly string[]).includes(choice)) name = choice as HypervisorName;
  else throw new BridgeError('EINVAL', `--hypervisor: expected one of ${HYPERVISOR_CHOICES.join(', ')}; got "${choice}"`);
  const backend = makeBackend(name, ctx);
  const detection = await backend.detect();
  if (!detection.available) {
    throw new BridgeError('ENOENT', `hypervisor ${detection.title} is not usable here: ${detection.notes.join('; ') || 'not found'} (see: bridge hypervisors)`);
  }
  return { backend, detection };
}
