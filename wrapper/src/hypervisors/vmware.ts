/**
 * VMware Workstation / Fusion through `vmrun` and a generated .vmx. Not tested on a real host.
 * VMware's NAT port forwarding is a host-wide, admin-only file (vmnet8 nat.conf), so instead the host
 * reaches the guest at its own NAT address, which `vmrun getGuestIPAddress` reports (the appliance
 * answers it with open-vm-tools' guestinfo); the guest ports are used as they are.
 */
import { mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BridgeError } from '../../../shared/src/errors.js';
import type { CommandRunner } from '../runner.js';
import {
  qemuImgConvert,
  vmName,
  waitUntilFalse,
  type BackendContext,
  type Detection,
  type HypervisorBackend,
  type PortForward,
  type Reachable,
  type VmDisk,
  type VmRef,
  type VmSpec,
} from './backend.js';

export function vmrunBinary(platform: NodeJS.Platform): string {
  if (platform === 'win32') return 'vmrun.exe';
  if (platform === 'darwin') return '/Applications/VMware Fusion.app/Contents/Library/vmrun';
  return 'vmrun';
}

/** A VMDK descriptor whose single extent is a raw file (writes reach the original). */
export function rawVmdkDescriptor(rawPath: string, sizeBytes: number): string {
  const sectors = Math.ceil(sizeBytes / 512);
  return [
    '# Disk DescriptorFile',
    'version=1',
    'CID=fffffffe',
    'parentCID=ffffffff',
    'createType="monolithicFlat"',
    '',
    `RW ${sectors} FLAT "${rawPath}" 0`,
    '',
    'ddb.adapterType = "lsilogic"',
    `ddb.geometry.cylinders = "${Math.min(Math.ceil(sectors / (255 * 63)), 65535)}"`,
    'ddb.geometry.heads = "255"',
    'ddb.geometry.sectors = "63"',
    'ddb.virtualHWVersion = "14"',
    '',
  ].join('\n');
}

/** The .vmx text (pure: unit-tested). Disks are SCSI 0:N in order: root, then spec.disks. */
export function vmxText(spec: VmSpec, diskFiles: string[], consoleLog: string): string {
  const lines: Record<string, string> = {
    '.encoding': 'UTF-8',
    'config.version': '8',
    'virtualHW.version': '14',
    displayName: vmName(spec.name),
    guestOS: 'other5xlinux-64',
    memsize: String(spec.memoryMiB),
    numvcpus: String(spec.cpus),
    'scsi0.present': 'TRUE',
    'scsi0.virtualDev': 'pvscsi',
    'disk.EnableUUID': 'TRUE',
    'ethernet0.present': 'TRUE',
    'ethernet0.connectionType': 'nat',
    'ethernet0.virtualDev': 'vmxnet3',
    'serial0.present': 'TRUE',
    'serial0.fileType': 'file',
    'serial0.fileName': consoleLog,
    'svga.present': 'FALSE',
    'sound.present': 'FALSE',
    'usb.present': 'FALSE',
    'isolation.tools.hgfs.disable': 'TRUE',
    'tools.syncTime': 'TRUE',
  };
  diskFiles.forEach((file, i) => {
    lines[`scsi0:${i}.present`] = 'TRUE';
    lines[`scsi0:${i}.fileName`] = file;
    // The root is non-persistent (writes discarded at power-off); read-only sources likewise never reach the file.
    const d: VmDisk | undefined = spec.disks[i - 1];
    lines[`scsi0:${i}.mode`] = i === 0 || d?.readOnly ? 'independent-nonpersistent' : 'independent-persistent';
  });
  return Object.entries(lines)
    .map(([k, v]) => `${k} = "${v}"`)
    .join('\n')
    .concat('\n');
}

export class VmwareBackend implements HypervisorBackend {
  readonly name = 'vmware' as const;
  readonly title = 'VMware Workstation/Fusion';
  readonly nativeDiskFormat = 'vmdk' as const;
  /** vmnet8's gateway is x.x.x.2 of a per-host subnet; the appliance learns it from DHCP (its default route). */
  readonly guestHostAddress = 'gateway';
  readonly forwardedClientAddress = '0.0.0.0/0';
  readonly canShareFolders = false;
  private readonly runner: CommandRunner;
  private readonly bin: string;
  private readonly typeFlag: string;

  constructor(private readonly ctx: BackendContext) {
    this.runner = ctx.runner;
    this.bin = vmrunBinary(ctx.runner.platform);
    this.typeFlag = ctx.runner.platform === 'darwin' ? 'fusion' : 'ws';
  }

  private vmrun(args: string[], check = true): Promise<{ code: number; stdout: string; stderr: string }> {
    return this.runner.run(this.bin, ['-T', this.typeFlag, ...args], { check });
  }

  async detect(): Promise<Detection> {
    const d: Detection = { name: this.name, title: this.title, available: false, accelerated: false, notes: [], tested: false };
    const path = this.runner.which(this.bin);
    if (!path) {
      d.notes.push('vmrun not found (VMware Workstation or Fusion)');
      return d;
    }
    d.path = path;
    // `vmrun` without arguments prints its usage, starting with the version, and exits non-zero.
    const r = await this.runner.run(this.bin, [], { check: false });
    d.version = /vmrun version (\S+)/.exec(r.stdout + r.stderr)?.[1];
    d.available = d.version !== undefined;
    d.acceleration = 'hardware';
    d.accelerated = d.available;
    d.notes.push('not yet tested on a real host');
    return d;
  }

  convertImage(src: string, dest: string, onProgress?: (percent: number) => void): Promise<void> {
    return qemuImgConvert(this.runner, src, dest, 'vmdk', onProgress);
  }

  async createVm(spec: VmSpec): Promise<VmRef> {
    if (spec.shares.length) throw new BridgeError('ENOTSUP', 'dir: sources are not supported with VMware (the appliance has no vmhgfs)');
    mkdirSync(spec.dir, { recursive: true });
    const files = [spec.bootDisk.path];
    for (const d of spec.disks) {
      if (d.format === 'vmdk') {
        files.push(d.path);
        continue;
      }
      const descriptor = join(spec.dir, `${d.serial}.vmdk`);
      writeFileSync(descriptor, rawVmdkDescriptor(d.path, statSync(d.path).size));
      files.push(descriptor);
    }
    const consoleLog = join(spec.dir, 'console.log');
    const vmx = join(spec.dir, `${vmName(spec.name)}.vmx`);
    writeFileSync(vmx, vmxText(spec, files, consoleLog));
    return { backend: this.name, id: vmx, dir: spec.dir, consoleLog };
  }

  async startVm(ref: VmRef): Promise<VmRef> {
    await this.vmrun(['start', ref.id, 'nogui']);
    return ref;
  }

  consoleLogPath(ref: VmRef): string {
    return ref.consoleLog;
  }

  async isRunning(ref: VmRef): Promise<boolean> {
    const r = await this.vmrun(['list'], false);
    return r.stdout.split(/\r?\n/).some((l) => l.trim() === ref.id);
  }

  async reachable(ref: VmRef, forwards: PortForward[]): Promise<Reachable> {
    const r = await this.vmrun(['getGuestIPAddress', ref.id, '-wait']);
    return { address: r.stdout.trim(), ports: Object.fromEntries(forwards.map((f) => [f.name, f.guestPort])) };
  }

  async stopVm(ref: VmRef, timeoutMs: number): Promise<void> {
    if (!(await this.isRunning(ref))) return;
    await this.vmrun(['stop', ref.id, 'soft'], false);
    if (await waitUntilFalse(() => this.isRunning(ref), timeoutMs, this.ctx.pollMs)) return;
    await this.vmrun(['stop', ref.id, 'hard'], false);
  }

  async deleteVm(ref: VmRef): Promise<void> {
    // Not `vmrun deleteVM`: it deletes every disk the VM references, including a user's raw source
    // behind our descriptor. The VM was never registered in the library, so removing its files is enough.
    rmSync(ref.id, { force: true });
    rmSync(join(ref.dir, 'console.log'), { force: true });
  }
}
