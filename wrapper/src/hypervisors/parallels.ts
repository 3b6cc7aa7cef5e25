/**
 * Parallels Desktop (macOS) through `prlctl`/`prlsrvctl`. Not tested on a real host.
 * Disks are Parallels .hdd images (qemu-img's "parallels" format); the Shared network's NAT forwards
 * host ports to the guest (rules are host-wide, named after the VM, and removed on delete).
 */
import { mkdirSync } from 'node:fs';
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

export class ParallelsBackend implements HypervisorBackend {
  readonly name = 'parallels' as const;
  readonly title = 'Parallels Desktop';
  readonly nativeDiskFormat = 'parallels' as const;
  readonly guestHostAddress = '10.211.55.2';
  readonly forwardedClientAddress = '10.211.55.2';
  readonly canShareFolders = false;
  private readonly runner: CommandRunner;

  constructor(private readonly ctx: BackendContext) {
    this.runner = ctx.runner;
  }

  private prlctl(args: string[], check = true): Promise<{ code: number; stdout: string; stderr: string }> {
    return this.runner.run('prlctl', args, { check });
  }

  async detect(): Promise<Detection> {
    const d: Detection = { name: this.name, title: this.title, available: false, accelerated: false, notes: [], tested: false };
    const path = this.runner.which('prlctl');
    if (!path) {
      d.notes.push('prlctl not found (Parallels Desktop Pro or Business edition)');
      return d;
    }
    d.path = path;
    const r = await this.prlctl(['--version'], false);
    d.version = /version (\S+)/.exec(r.stdout)?.[1];
    d.available = r.code === 0;
    d.acceleration = 'hardware';
    d.accelerated = d.available;
    d.notes.push('not yet tested on a real host');
    return d;
  }

  convertImage(src: string, dest: string, onProgress?: (percent: number) => void): Promise<void> {
    return qemuImgConvert(this.runner, src, dest, 'parallels', onProgress);
  }

  async createVm(spec: VmSpec): Promise<VmRef> {
    if (spec.shares.length) throw new BridgeError('ENOTSUP', 'dir: sources are not supported with Parallels');
    const name = vmName(spec.name);
    mkdirSync(spec.dir, { recursive: true });
    const consoleLog = join(spec.dir, 'console.log');
    await this.prlctl(['create', name, '--ostype', 'linux', '--distribution', 'linux', '--no-hdd', '--dst', spec.dir]);
    await this.prlctl(['set', name, '--memsize', String(spec.memoryMiB), '--cpus', String(spec.cpus), '--startup-view', 'headless', '--autostart', 'off']);
    await this.prlctl(['set', name, '--device-add', 'serial', '--output', consoleLog]);
    await this.prlctl(['set', name, '--device-add', 'hdd', '--image', spec.bootDisk.path, '--iface', 'sata', '--position', '0']);
    for (const [i, d] of spec.disks.entries()) {
      if (d.format !== 'parallels') throw new BridgeError('ENOTSUP', `Parallels attaches only .hdd disks; ${d.path} is ${d.format}`);
      await this.prlctl(['set', name, '--device-add', 'hdd', '--image', d.path, '--iface', 'sata', '--position', String(i + 1)]);
    }
    await this.prlctl(['set', name, '--device-set', 'net0', '--type', 'shared']);
    for (const f of spec.forwards) {
      await this.runner.run('prlsrvctl', ['net', 'set', 'Shared', '--nat-tcp-add', `${name}-${f.name},${f.hostPort},${name},${f.guestPort}`]);
    }
    return { backend: this.name, id: name, dir: spec.dir, consoleLog };
  }

  async startVm(ref: VmRef): Promise<VmRef> {
    await this.prlctl(['start', ref.id]);
    return ref;
  }

  consoleLogPath(ref: VmRef): string {
    return ref.consoleLog;
  }

  async isRunning(ref: VmRef): Promise<boolean> {
    const r = await this.prlctl(['status', ref.id], false);
    return r.code === 0 && /\b(running|starting|stopping|paused)\b/.test(r.stdout);
  }

  async reachable(_ref: VmRef, forwards: PortForward[]): Promise<Reachable> {
    return { address: '127.0.0.1', ports: Object.fromEntries(forwards.map((f) => [f.name, f.hostPort])) };
  }

  async stopVm(ref: VmRef, timeoutMs: number): Promise<void> {
    if (!(await this.isRunning(ref))) return;
    await this.prlctl(['stop', ref.id, '--acpi'], false);
    if (await waitUntilFalse(() => this.isRunning(ref), timeoutMs, this.ctx.pollMs)) return;
    await this.prlctl(['stop', ref.id, '--kill'], false);
  }

  async deleteVm(ref: VmRef): Promise<void> {
    for (const f of ['ssh', 'smb', 'nfs', 'iscsi'])
      await this.runner.run('prlsrvctl', ['net', 'set', 'Shared', '--nat-tcp-del', `${ref.id}-${f}`], { check: false });
    // `prlctl delete` removes attached images: every .hdd attached is a converted copy in the instance dir.
    await this.prlctl(['delete', ref.id], false);
  }
}
