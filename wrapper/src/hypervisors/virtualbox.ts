/**
 * VirtualBox through VBoxManage. Not tested on a real host (none here): unit tests check the exact
 * commands. The appliance boots from its MBR disk (converted to VDI); extra disks sit on an AHCI
 * controller whose port serial numbers carry the `bridge-*` names; NAT rules forward 127.0.0.1 ports.
 */
import { mkdirSync, rmSync } from 'node:fs';
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
  type VmRef,
  type VmSpec,
} from './backend.js';

export class VirtualBoxBackend implements HypervisorBackend {
  readonly name = 'virtualbox' as const;
  readonly title = 'Oracle VirtualBox';
  readonly nativeDiskFormat = 'vdi' as const;
  readonly guestHostAddress = '10.0.2.2';
  readonly forwardedClientAddress = '10.0.2.2';
  readonly canShareFolders = false; // vboxsf is not in the appliance kernel
  private readonly runner: CommandRunner;
  private readonly bin: string;

  constructor(private readonly ctx: BackendContext) {
    this.runner = ctx.runner;
    this.bin = ctx.runner.platform === 'win32' ? 'VBoxManage.exe' : 'VBoxManage';
  }

  private vbox(args: string[], check = true): Promise<{ code: number; stdout: string; stderr: string }> {
    return this.runner.run(this.bin, args, { check });
  }

  async detect(): Promise<Detection> {
    const d: Detection = { name: this.name, title: this.title, available: false, accelerated: false, notes: [], tested: false };
    const path = this.runner.which(this.bin);
    if (!path) {
      d.notes.push(`${this.bin} not found on PATH`);
      return d;
    }
    d.path = path;
    const v = await this.vbox(['--version'], false);
    d.available = v.code === 0;
    d.version = v.stdout.trim().split('\n')[0];
    d.acceleration = 'hardware';
    d.accelerated = d.available;
    d.notes.push('not yet tested on a real host');
    return d;
  }

  convertImage(src: string, dest: string, onProgress?: (percent: number) => void): Promise<void> {
    return qemuImgConvert(this.runner, src, dest, 'vdi', onProgress);
  }

  async createVm(spec: VmSpec): Promise<VmRef> {
    const name = vmName(spec.name);
    mkdirSync(spec.dir, { recursive: true });
    const consoleLog = join(spec.dir, 'console.log');
    await this.vbox(['createvm', '--name', name, '--basefolder', spec.dir, '--ostype', 'Linux_64', '--register']);
    const modify = ['modifyvm', name, '--memory', String(spec.memoryMiB), '--cpus', String(spec.cpus), '--firmware', 'bios'];
    modify.push('--boot1', 'disk', '--boot2', 'none', '--boot3', 'none', '--boot4', 'none', '--audio-driver', 'none', '--graphicscontroller', 'vmsvga');
    modify.push('--nic1', 'nat', '--nictype1', 'virtio', '--uart1', '0x3F8', '4', '--uartmode1', 'file', consoleLog);
    for (const f of spec.forwards) modify.push('--natpf1', `${f.name},tcp,127.0.0.1,${f.hostPort},,${f.guestPort}`);
    await this.vbox(modify);
    await this.vbox(['storagectl', name, '--name', 'SATA', '--add', 'sata', '--controller', 'IntelAhci', '--portcount', String(spec.disks.length + 1)]);
    const attach = async (port: number, path: string, serial: string, mtype: string): Promise<void> => {
      await this.vbox([
        'storageattach',
        name,
        '--storagectl',
        'SATA',
        '--port',
        String(port),
        '--device',
        '0',
        '--type',
        'hdd',
        '--medium',
        path,
        '--mtype',
        mtype,
      ]);
      await this.vbox(['setextradata', name, `VBoxInternal/Devices/ahci/0/Config/Port${port}/SerialNumber`, serial]);
    };
    // The boot disk is immutable: VirtualBox keeps writes in a differencing image it throws away.
    await attach(0, spec.bootDisk.path, 'bridge-root', 'immutable');
    for (const [i, disk] of spec.disks.entries()) {
      let medium = disk.path;
      if (disk.format === 'raw') {
        // A raw file is attached through a VMDK descriptor that points at it, so writes reach the original.
        medium = join(spec.dir, `${disk.serial}.vmdk`);
        await this.vbox(['createmedium', 'disk', '--filename', medium, '--format', 'VMDK', '--variant', 'RawDisk', '--property', `RawDrive=${disk.path}`]);
      }
      await attach(i + 1, medium, disk.serial, disk.readOnly ? 'readonly' : 'normal');
    }
    if (spec.shares.length) throw new BridgeError('ENOTSUP', 'dir: sources are not supported with VirtualBox (the appliance has no vboxsf)');
    return { backend: this.name, id: name, dir: spec.dir, consoleLog };
  }

  async startVm(ref: VmRef): Promise<VmRef> {
    await this.vbox(['startvm', ref.id, '--type', 'headless']);
    return ref;
  }

  consoleLogPath(ref: VmRef): string {
    return ref.consoleLog;
  }

  async isRunning(ref: VmRef): Promise<boolean> {
    const r = await this.vbox(['showvminfo', ref.id, '--machinereadable'], false);
    return r.code === 0 && /^VMState="(running|starting|stopping|paused)"/m.test(r.stdout);
  }

  async reachable(_ref: VmRef, forwards: PortForward[]): Promise<Reachable> {
    return { address: '127.0.0.1', ports: Object.fromEntries(forwards.map((f) => [f.name, f.hostPort])) };
  }

  async stopVm(ref: VmRef, timeoutMs: number): Promise<void> {
    if (!(await this.isRunning(ref))) return;
    await this.vbox(['controlvm', ref.id, 'acpipowerbutton'], false);
    if (await waitUntilFalse(() => this.isRunning(ref), timeoutMs, this.ctx.pollMs)) return;
    await this.vbox(['controlvm', ref.id, 'poweroff'], false);
    await waitUntilFalse(() => this.isRunning(ref), 10_000, this.ctx.pollMs);
  }

  async deleteVm(ref: VmRef): Promise<void> {
    // Not --delete: that would also delete attached media, including a user's source disk.
    await this.vbox(['unregistervm', ref.id], false);
    rmSync(join(ref.dir, ref.id), { recursive: true, force: true });
  }
}
