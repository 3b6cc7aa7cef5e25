/**
 * The table of hypervisor operations (libguestfs' backend_ops): one interface, one file per hypervisor.
 * The instance code only talks to this interface; which backend runs is chosen by detect.ts.
 */
import type { CommandRunner } from '../runner.js';

export const HYPERVISORS = ['qemu', 'virtualbox', 'vmware', 'hyperv', 'parallels'] as const;
export type HypervisorName = (typeof HYPERVISORS)[number];

export type DiskFormat = 'raw' | 'qcow2' | 'vmdk' | 'vdi' | 'vhdx' | 'parallels';

/** What `bridge hypervisors` reports for one hypervisor. */
export interface Detection {
  name: HypervisorName;
  title: string;
  available: boolean;
  version?: string;
  path?: string;
  /** kvm, hvf, whpx, tcg (QEMU) or "hardware" (the others always need VT-x/AMD-V). */
  acceleration?: string;
  accelerated: boolean;
  /** Facts a user can act on: why it is unavailable, what was probed. */
  notes: string[];
  /** Whether this backend has been exercised on a real host by our tests. */
  tested: boolean;
}

export type ForwardName = 'ssh' | 'smb' | 'nfs' | 'iscsi';

export interface PortForward {
  name: ForwardName;
  hostPort: number;
  guestPort: number;
}

export interface VmDisk {
  path: string;
  format: DiskFormat;
  /** The guest finds the disk by this serial (virtio serial, SATA serial number). */
  serial: string;
  readOnly: boolean;
}

export interface VmShare {
  tag: string;
  hostPath: string;
  readOnly: boolean;
}

export interface VmSpec {
  /** Instance name; the VM is called `bridge-<name>` on the hypervisor. */
  name: string;
  /** The instance's private directory for VM files (console log, sockets, converted disks). */
  dir: string;
  /** The appliance's boot disk, already in the backend's native format. Never written (overlay/snapshot). */
  bootDisk: { path: string; format: DiskFormat };
  /** Direct kernel boot (QEMU only); other backends boot the disk's boot loader. */
  kernel?: { kernel: string; initrd: string; cmdline: string };
  memoryMiB: number;
  cpus: number;
  disks: VmDisk[];
  shares: VmShare[];
  forwards: PortForward[];
  /** QEMU only: kvm, hvf, whpx or tcg. */
  accel?: string;
  /** QEMU only: a saved VM state to start from (a template; warm-start.ts). */
  restoreFrom?: string;
  /** QEMU only: host socket of the guest's second serial port, for a template's restore seed. */
  seedSocket?: string;
}

/** What the instance state records about a VM so that a later CLI run can reach and stop it. */
export interface VmRef {
  backend: HypervisorName;
  /** The VM's name (or path of its .vmx) on the hypervisor. */
  id: string;
  dir: string;
  /** The hypervisor process (QEMU), when the backend has one of its own. */
  pid?: number;
  consoleLog: string;
}

/** Where the host reaches the guest's services. */
export interface Reachable {
  address: string;
  ports: Partial<Record<ForwardName, number>>;
}

export interface HypervisorBackend {
  readonly name: HypervisorName;
  readonly title: string;
  readonly nativeDiskFormat: DiskFormat;
  /** The host as the guest sees it through the hypervisor's NAT (e.g. 10.0.2.2 for QEMU user-net). */
  readonly guestHostAddress: string;
  /** The source address forwarded connections have inside the guest (for hosts allow / NFS clients). */
  readonly forwardedClientAddress: string;
  /** Can attach a host folder to the guest (QEMU virtfs/9p). */
  readonly canShareFolders: boolean;
  detect(): Promise<Detection>;
  /** Converts a raw image to the native format (no-op copy semantics are the caller's business). */
  convertImage(src: string, dest: string, onProgress?: (percent: number) => void): Promise<void>;
  createVm(spec: VmSpec): Promise<VmRef>;
  startVm(ref: VmRef, spec: VmSpec): Promise<VmRef>;
  consoleLogPath(ref: VmRef): string;
  isRunning(ref: VmRef): Promise<boolean>;
  reachable(ref: VmRef, forwards: PortForward[]): Promise<Reachable>;
  /** Graceful power-off (ACPI), then forced after `timeoutMs`. */
  stopVm(ref: VmRef, timeoutMs: number): Promise<void>;
  /** Unregisters the VM and removes files the backend created (never the user's source disks). */
  deleteVm(ref: VmRef): Promise<void>;
}

export interface BackendContext {
  runner: CommandRunner;
  /** Milliseconds between state polls while waiting for a VM to stop. */
  pollMs?: number;
}

/** `qemu-img convert` with its progress parsed (every backend's conversion goes through it). */
export async function qemuImgConvert(
  runner: CommandRunner,
  src: string,
  dest: string,
  format: DiskFormat,
  onProgress?: (percent: number) => void,
): Promise<void> {
  const args = ['convert', '-p', '-f', 'raw', '-O', format];
  if (format === 'vhdx') args.push('-o', 'subformat=dynamic');
  if (format === 'vmdk') args.push('-o', 'subformat=monolithicSparse');
  args.push(src, dest);
  await runner.run('qemu-img', args, {
    onStdout: (chunk) => {
      for (const m of chunk.matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)) onProgress?.(Number(m[1]));
    },
  });
}

/** Polls `probe` until it returns false or the deadline passes; true when it stopped in time. */
export async function waitUntilFalse(probe: () => Promise<boolean>, timeoutMs: number, pollMs = 200): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!(await probe())) return true;
    await new Promise((r) => setTimeout(r, pollMs));
  }
  return !(await probe());
}

export function vmName(instance: string): string {
  return `bridge-${instance}`;
}
