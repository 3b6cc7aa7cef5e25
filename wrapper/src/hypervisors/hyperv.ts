/**
 * Hyper-V through PowerShell (Windows Pro/Enterprise, elevated). Not tested on a real host.
 * Generation 1 VM (BIOS boot of the MBR disk), the "Default Switch" (NAT without port forwards: the host
 * reaches the guest at its own address, read from the VM's network adapter), COM1 on a named pipe.
 * Hyper-V attaches only VHD/VHDX files: disk sources must be given as .vhdx (or are converted by the
 * caller into a copy).
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

/** Quotes a value for a single-quoted PowerShell string. */
export function psQuote(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

export class HyperVBackend implements HypervisorBackend {
  readonly name = 'hyperv' as const;
  readonly title = 'Microsoft Hyper-V';
  readonly nativeDiskFormat = 'vhdx' as const;
  /** The Default Switch's gateway changes per boot; the appliance uses its DHCP default route. */
  readonly guestHostAddress = 'gateway';
  readonly forwardedClientAddress = '0.0.0.0/0';
  readonly canShareFolders = false;
  private readonly runner: CommandRunner;

  constructor(private readonly ctx: BackendContext) {
    this.runner = ctx.runner;
  }

  /** Runs one PowerShell script; the script text goes on stdin, not in the arguments. */
  ps(script: string, check = true): Promise<{ code: number; stdout: string; stderr: string }> {
    return this.runner.run('powershell.exe', ['-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass', '-Command', '-'], {
      input: `$ErrorActionPreference = 'Stop'\n${script}\n`,
      check,
    });
  }

  async detect(): Promise<Detection> {
    const d: Detection = { name: this.name, title: this.title, available: false, accelerated: false, notes: [], tested: false };
    if (this.runner.platform !== 'win32' || !this.runner.which('powershell.exe')) {
      d.notes.push('Hyper-V is only available on Windows');
      return d;
    }
    d.path = this.runner.which('powershell.exe');
    const r = await this.ps(
      '(Get-Command Get-VM -ErrorAction Stop) | Out-Null; (Get-VMHost).Name | Out-Null; [Environment]::OSVersion.Version.ToString()',
      false,
    );
    d.available = r.code === 0;
    if (d.available) d.version = r.stdout.trim();
    else d.notes.push('the Hyper-V PowerShell module is missing or this shell is not elevated (Hyper-V Administrators)');
    d.acceleration = 'hardware';
    d.accelerated = d.available;
    d.notes.push('not yet tested on a real host');
    return d;
  }

  convertImage(src: string, dest: string, onProgress?: (percent: number) => void): Promise<void> {
    return qemuImgConvert(this.runner, src, dest, 'vhdx', onProgress);
  }

  /** The PowerShell that creates the VM (pure: unit-tested). */
  createScript(spec: VmSpec): string {
    const n = psQuote(vmName(spec.name));
    const lines = [
      `New-VM -Name ${n} -Generation 1 -MemoryStartupBytes ${spec.memoryMiB}MB -NoVHD -SwitchName 'Default Switch' -Path ${psQuote(spec.dir)} | Out-Null`,
      `Set-VMProcessor -VMName ${n} -Count ${spec.cpus}`,
      `Set-VMMemory -VMName ${n} -DynamicMemoryEnabled $false`,
      `Set-VM -Name ${n} -AutomaticCheckpointsEnabled $false -AutomaticStopAction TurnOff`,
      `Set-VMComPort -VMName ${n} -Number 1 -Path ${psQuote(`\\\\.\\pipe\\${vmName(spec.name)}`)}`,
      `Add-VMHardDiskDrive -VMName ${n} -ControllerType IDE -ControllerNumber 0 -ControllerLocation 0 -Path ${psQuote(spec.bootDisk.path)}`,
    ];
    spec.disks.forEach((d, i) => {
      if (d.format !== 'vhdx') throw new BridgeError('ENOTSUP', `Hyper-V attaches only VHDX disks; ${d.path} is ${d.format}`);
      lines.push(`Add-VMHardDiskDrive -VMName ${n} -ControllerType SCSI -ControllerNumber 0 -ControllerLocation ${i} -Path ${psQuote(d.path)}`);
    });
    return lines.join('\n');
  }

  async createVm(spec: VmSpec): Promise<VmRef> {
    if (spec.shares.length) throw new BridgeError('ENOTSUP', 'dir: sources are not supported with Hyper-V');
    mkdirSync(spec.dir, { recursive: true });
    await this.ps(this.createScript(spec));
    // The console goes to a named pipe; `bridge logs` reads a file only where the backend can write one.
    return { backend: this.name, id: vmName(spec.name), dir: spec.dir, consoleLog: join(spec.dir, 'console.log') };
  }

  async startVm(ref: VmRef): Promise<VmRef> {
    await this.ps(`Start-VM -Name ${psQuote(ref.id)}`);
    return ref;
  }

  consoleLogPath(ref: VmRef): string {
    return ref.consoleLog;
  }

  async isRunning(ref: VmRef): Promise<boolean> {
    const r = await this.ps(`(Get-VM -Name ${psQuote(ref.id)}).State`, false);
    return r.code === 0 && r.stdout.trim() !== 'Off';
  }

  async reachable(ref: VmRef, forwards: PortForward[]): Promise<Reachable> {
    const r = await this.ps(
      `(Get-VMNetworkAdapter -VMName ${psQuote(ref.id)}).IPAddresses | Where-Object { $_ -match '^\\d+\\.\\d+\\.\\d+\\.\\d+$' } | Select-Object -First 1`,
    );
    const address = r.stdout.trim();
    if (!address) throw new BridgeError('EIO', `Hyper-V reports no IPv4 address for ${ref.id} yet`);
    return { address, ports: Object.fromEntries(forwards.map((f) => [f.name, f.guestPort])) };
  }

  async stopVm(ref: VmRef, timeoutMs: number): Promise<void> {
    if (!(await this.isRunning(ref))) return;
    await this.ps(`Stop-VM -Name ${psQuote(ref.id)} -Force -AsJob | Out-Null`, false);
    if (await waitUntilFalse(() => this.isRunning(ref), timeoutMs, this.ctx.pollMs)) return;
    await this.ps(`Stop-VM -Name ${psQuote(ref.id)} -TurnOff -Force`, false);
  }

  async deleteVm(ref: VmRef): Promise<void> {
    // Remove-VM leaves disk files alone (the user's sources included).
    await this.ps(`Remove-VM -Name ${psQuote(ref.id)} -Force`, false);
    rmSync(join(ref.dir, ref.id), { recursive: true, force: true });
  }
}
