/**
 * QEMU: the backend that runs everywhere (and the one tested here, with TCG). Direct kernel boot of the
 * appliance's kernel + initramfs, the boot disk behind a throw-away snapshot, user-mode networking with
 * host port forwards on 127.0.0.1, the console on a file, QMP on a Unix socket for a clean power-off.
 * QEMU daemonizes itself and its pid is recorded, so the VM outlives the CLI.
 *
 * Warm starts (wrapper/src/warm-start.ts): a VM's state is saved with QMP `migrate` to a file and later
 * VMs start from it (`-incoming`), with the same device list; source disks are hot-plugged after. The
 * `pc` machine takes PCI hot-plug on its root bus (q35 would need spare pcie-root-ports).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { BridgeError } from '../../../shared/src/errors.js';
import { logger } from '../../../shared/src/logger.js';
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
import { qmpOnce, QmpClient } from './qmp.js';

const log = logger().child({ component: 'qemu' });

export const QEMU_ACCELS = ['kvm', 'hvf', 'whpx', 'tcg'] as const;

export interface QemuContext extends BackendContext {
  /** Where the KVM probe's verdict is cached (per QEMU version and host kernel). */
  probeCacheFile?: string;
  /** Forced accelerator (`--accel` or BRIDGE_QEMU_ACCEL). */
  accel?: string;
  /** Time a KVM probe may take; this machine's paravirtual /dev/kvm needs > 5 s for one boot sector. */
  kvmProbeTimeoutMs?: number;
  /**
   * The appliance's kernel: when given, the accelerator must boot it (to its "no root" panic), not just
   * run a boot sector. A paravirtual /dev/kvm here runs the boot sector but hangs stock kernels.
   */
  probeKernel?: string;
  /** Time the kernel probe may take (a kernel reaches its panic in ~1 s with working KVM). */
  kernelProbeTimeoutMs?: number;
}

export function qemuBinary(platform: NodeJS.Platform): string {
  return platform === 'win32' ? 'qemu-system-x86_64.exe' : 'qemu-system-x86_64';
}

/** A Unix socket in `dir`; such paths are limited to ~107 bytes, so long instance dirs fall back to /tmp. */
function socketIn(dir: string, name: string): string {
  const p = join(dir, `${name}.sock`);
  if (p.length < 100) return p;
  return join(tmpdir(), `bridge-${name}-${createHash('sha256').update(dir).digest('hex').slice(0, 16)}.sock`);
}

/** The QMP socket. */
export function qmpSocketPath(dir: string): string {
  return socketIn(dir, 'qmp');
}

/** The second serial port's socket, on which a restored VM receives its seed (warm-start.ts). */
export function seedSocketPath(dir: string): string {
  return socketIn(dir, 'seed');
}

/** The guest device behind the seed socket: the second 16550 UART. */
export const SEED_DEVICE = '/dev/ttyS1';

/** A word for `sh -c` (QEMU runs `exec:` migration commands through the shell). */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The full QEMU command line for a VM (pure: unit-tested). */
export function qemuArgs(spec: VmSpec, platform: NodeJS.Platform): string[] {
  const accel = spec.accel ?? 'tcg';
  const args = ['-name', `${vmName(spec.name)},process=${vmName(spec.name)}`];
  args.push('-machine', QEMU_MACHINE, '-accel', accel, '-cpu', accel === 'tcg' ? 'max' : 'host');
  args.push('-m', String(spec.memoryMiB), '-smp', String(spec.cpus));
  args.push('-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none');
  args.push('-serial', `file:${join(spec.dir, 'console.log')}`);
  if (spec.seedSocket) args.push('-serial', `unix:${spec.seedSocket},server=on,wait=off`);
  if (platform !== 'win32') {
    args.push('-qmp', `unix:${qmpSocketPath(spec.dir)},server=on,wait=off`);
    args.push('-daemonize', '-pidfile', join(spec.dir, 'qemu.pid'));
  } else {
    args.push('-qmp', `tcp:127.0.0.1:0,server=on,wait=off`);
  }
  if (spec.kernel) args.push('-kernel', spec.kernel.kernel, '-initrd', spec.kernel.initrd, '-append', spec.kernel.cmdline);
  // The root disk is first (the guest's /dev/vda) and never written: snapshot=on discards writes.
  args.push('-drive', `file=${spec.bootDisk.path},format=${spec.bootDisk.format},if=none,id=root,snapshot=on,cache=unsafe`);
  args.push('-device', 'virtio-blk-pci,drive=root,serial=bridge-root');
  spec.disks.forEach((d, i) => {
    args.push('-drive', `file=${d.path},format=${d.format},if=none,id=disk${i},cache=writeback${d.readOnly ? ',readonly=on' : ''}`);
    args.push('-device', `virtio-blk-pci,drive=disk${i},serial=${d.serial}`);
  });
  spec.shares.forEach((s, i) => {
    args.push('-virtfs', `local,path=${s.hostPath},mount_tag=${s.tag},security_model=none,id=fs${i}${s.readOnly ? ',readonly=on' : ''}`);
  });
  const fwd = spec.forwards.map((f) => `,hostfwd=tcp:127.0.0.1:${f.hostPort}-:${f.guestPort}`).join('');
  args.push('-nic', `user,model=virtio-net-pci${fwd}`);
  // Entropy: sshd and Node block on it early in boot otherwise.
  args.push('-device', 'virtio-rng-pci');
  if (spec.restoreFrom) args.push('-incoming', `exec:cat ${shellQuote(spec.restoreFrom)}`);
  return args;
}

export const QEMU_MACHINE = 'pc';

/**
 * What a saved state depends on besides the image and the QEMU version: the command line with the
 * instance's paths, name and host ports taken out (hostfwd belongs to the network backend, not to
 * the guest's devices: a restored VM gets new ports).
 */
export function templateIdentity(spec: VmSpec, platform: NodeJS.Platform): string {
  const neutral: VmSpec = {
    ...spec,
    name: 'template',
    dir: '/DIR',
    bootDisk: { ...spec.bootDisk, path: '/BOOT' },
    ...(spec.kernel ? { kernel: { ...spec.kernel, kernel: '/KERNEL', initrd: '/INITRD' } } : {}),
    disks: spec.disks.map((d, i) => ({ ...d, path: `/DISK${i}` })),
    forwards: [],
    ...(spec.seedSocket ? { seedSocket: '/SEED' } : {}),
  };
  delete neutral.restoreFrom;
  return qemuArgs(neutral, platform).join(' ');
}

export interface QmpCall {
  execute: string;
  arguments?: Record<string, unknown>;
}

/** Pauses the VM and writes its state to `file` (QEMU runs `cat > file`). */
export function saveStateCommands(file: string): QmpCall[] {
  return [{ execute: 'stop' }, { execute: 'migrate', arguments: { uri: `exec:cat > ${shellQuote(file)}` } }];
}

/** Hot-plugs one raw disk as virtio-blk with its serial (node and device named after the serial). */
export function hotAddDiskCommands(d: VmDisk): QmpCall[] {
  const file = { driver: 'file', filename: d.path, 'read-only': d.readOnly };
  return [
    { execute: 'blockdev-add', arguments: { driver: d.format, 'node-name': `node-${d.serial}`, 'read-only': d.readOnly, file } },
    { execute: 'device_add', arguments: { driver: 'virtio-blk-pci', drive: `node-${d.serial}`, serial: d.serial, id: `dev-${d.serial}` } },
  ];
}

/** Something that runs QMP commands (QmpClient; a recorder in tests). */
export interface QmpRunner {
  execute(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<unknown>;
}

async function runAll(q: QmpRunner, calls: QmpCall[]): Promise<void> {
  for (const c of calls) await q.execute(c.execute, c.arguments);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Saves the paused VM's state and waits until the file is complete. */
export async function saveState(q: QmpRunner, file: string, timeoutMs = 120_000, pollMs = 50): Promise<void> {
  await runAll(q, saveStateCommands(file));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = (await q.execute('query-migrate')) as { status?: string; 'error-desc'?: string };
    if (s.status === 'completed') return;
    if (s.status === 'failed' || s.status === 'cancelled') throw new BridgeError('EIO', `saving the VM state failed: ${s['error-desc'] ?? s.status}`);
    if (Date.now() > deadline) throw new BridgeError('EIO', `saving the VM state did not finish within ${timeoutMs / 1000} s (${s.status})`);
    await sleep(pollMs);
  }
}

/** Waits until an `-incoming` VM has loaded its state (it is then paused); returns the run state. */
export async function awaitIncoming(q: QmpRunner, timeoutMs = 60_000, pollMs = 20): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = (await q.execute('query-status')) as { status: string };
    if (s.status !== 'inmigrate') return s.status;
    if (Date.now() > deadline) throw new BridgeError('EIO', `the saved state did not load within ${timeoutMs / 1000} s`);
    await sleep(pollMs);
  }
}

export async function hotAddDisks(q: QmpRunner, disks: VmDisk[]): Promise<void> {
  for (const d of disks) await runAll(q, hotAddDiskCommands(d));
}

/** What a kernel booted without a root or initramfs prints last: it really ran, to its end. */
export const KERNEL_PROBE_DONE = /Kernel panic|VFS: Unable to mount root|No working init found/;

/** The kernel probe: the appliance's kernel, no initramfs and no disk, console on stdout, exit at its panic. */
export function kernelProbeArgs(accel: string, kernel: string): string[] {
  return [
    ...['-accel', accel, '-machine', 'pc', '-cpu', accel === 'tcg' ? 'max' : 'host', '-m', '128'],
    ...['-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-no-reboot'],
    ...['-kernel', kernel, '-append', 'console=ttyS0 panic=-1 loglevel=4'],
  ];
}

/** A boot sector that writes 0x31 to the isa-debug-exit port: QEMU exits 99 when it really ran guest code. */
function probeBootSector(): Buffer {
  const b = Buffer.alloc(512);
  Buffer.from([0xb0, 0x31, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]).copy(b);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

export function parseQemuVersion(text: string): string | undefined {
  return /QEMU emulator version (\S+)/.exec(text)?.[1];
}

export class QemuBackend implements HypervisorBackend {
  readonly name = 'qemu' as const;
  readonly title = 'QEMU';
  readonly nativeDiskFormat = 'raw' as const;
  readonly guestHostAddress = '10.0.2.2';
  readonly forwardedClientAddress = '10.0.2.2';
  readonly canShareFolders = true;
  private readonly runner: CommandRunner;
  private readonly bin: string;

  constructor(private readonly ctx: QemuContext) {
    this.runner = ctx.runner;
    this.bin = qemuBinary(ctx.runner.platform);
  }

  async detect(): Promise<Detection> {
    const d: Detection = { name: 'qemu', title: this.title, available: false, accelerated: false, notes: [], tested: true };
    const path = this.runner.which(this.bin);
    if (!path) {
      d.notes.push(`${this.bin} not found on PATH (Debian: apt-get install qemu-system-x86 qemu-utils; macOS: brew install qemu)`);
      return d;
    }
    d.path = path;
    const v = await this.runner.run(this.bin, ['--version'], { check: false });
    d.version = parseQemuVersion(v.stdout);
    d.available = v.code === 0;
    if (!this.runner.which('qemu-img')) d.notes.push('qemu-img not found (Debian: qemu-utils): image conversion will fail');
    const accel = await this.chooseAccel(d.notes, d.version ?? 'unknown');
    d.acceleration = accel;
    d.accelerated = accel !== 'tcg';
    return d;
  }

  /** Picks the accelerator: forced, else the platform's own if it really runs guest code, else TCG. */
  async chooseAccel(notes: string[], version: string): Promise<string> {
    const forced = this.ctx.accel ?? process.env.BRIDGE_QEMU_ACCEL;
    if (forced && forced !== 'auto') {
      if (!(QEMU_ACCELS as readonly string[]).includes(forced))
        throw new BridgeError('EINVAL', `--accel: expected auto, ${QEMU_ACCELS.join(', ')}; got "${forced}"`);
      notes.push(`accelerator forced to ${forced}`);
      return forced;
    }
    const platform = this.runner.platform;
    const candidate = platform === 'linux' ? 'kvm' : platform === 'darwin' ? 'hvf' : platform === 'win32' ? 'whpx' : undefined;
    if (!candidate) return 'tcg';
    if (candidate === 'kvm' && !existsSync('/dev/kvm')) {
      notes.push('/dev/kvm is missing: using TCG (software emulation, slower)');
      return 'tcg';
    }
    const ok = await this.probeAccel(candidate, version, notes);
    return ok ? candidate : 'tcg';
  }

  /**
   * Boots a guest with the accelerator, with a time limit: the appliance's kernel when known (it must
   * reach its panic for want of a root), else a one-sector guest. The verdict is cached.
   */
  async probeAccel(accel: string, version: string, notes: string[]): Promise<boolean> {
    const kernel = this.ctx.probeKernel;
    // A kernel verdict is per guest kernel too (by size: the image hash changes with every agent build).
    const key = kernel ? `${accel}|${version}|${release()}|kernel:${statSync(kernel).size}` : `${accel}|${version}|${release()}`;
    const cacheFile = this.ctx.probeCacheFile;
    if (cacheFile && existsSync(cacheFile)) {
      try {
        const cached = JSON.parse(readFileSync(cacheFile, 'utf8')) as Record<string, { ok: boolean; note: string }>;
        const hit = cached[key];
        if (hit) {
          notes.push(`${hit.note} (cached probe)`);
          return hit.ok;
        }
      } catch {
        // unreadable cache: probe again
      }
    }
    const dir = mkdtempSync(join(tmpdir(), 'bridge-probe-'));
    const timeoutMs = kernel ? (this.ctx.kernelProbeTimeoutMs ?? 8000) : (this.ctx.kvmProbeTimeoutMs ?? 3000);
    const what = kernel ? 'the appliance kernel' : 'a probe guest';
    let ok = false;
    let note: string;
    try {
      let args: string[];
      let passed: (r: { code: number; stdout: string }) => boolean;
      if (kernel) {
        args = kernelProbeArgs(accel, kernel);
        passed = (r) => KERNEL_PROBE_DONE.test(r.stdout);
      } else {
        const img = join(dir, 'probe.img');
        writeFileSync(img, probeBootSector());
        args = ['-accel', accel, '-machine', 'pc', '-nodefaults', '-no-user-config', '-display', 'none', '-m', '16'];
        args.push('-drive', `file=${img},format=raw,if=floppy`, '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04');
        passed = (r) => r.code === 99;
      }
      const started = Date.now();
      const r = await this.runner.run(this.bin, args, { check: false, timeoutMs }).catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }));
      ok = passed(r);
      note = ok
        ? `${accel} works (${what} ran in ${Date.now() - started} ms)`
        : `${accel} is present but did not run ${what} within ${timeoutMs} ms: using TCG (force with --accel ${accel})`;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    notes.push(note);
    if (cacheFile) {
      let cached: Record<string, unknown> = {};
      try {
        cached = JSON.parse(readFileSync(cacheFile, 'utf8')) as Record<string, unknown>;
      } catch {
        // new cache
      }
      mkdirSync(dirname(cacheFile), { recursive: true });
      writeFileSync(cacheFile, JSON.stringify({ ...cached, [key]: { ok, note } }, null, 2));
    }
    return ok;
  }

  convertImage(src: string, dest: string, onProgress?: (percent: number) => void): Promise<void> {
    return qemuImgConvert(this.runner, src, dest, 'raw', onProgress);
  }

  async createVm(spec: VmSpec): Promise<VmRef> {
    mkdirSync(spec.dir, { recursive: true });
    return { backend: 'qemu', id: vmName(spec.name), dir: spec.dir, consoleLog: join(spec.dir, 'console.log') };
  }

  async startVm(ref: VmRef, spec: VmSpec): Promise<VmRef> {
    const args = qemuArgs({ ...spec, accel: spec.accel ?? (await this.chooseAccel([], 'unknown')) }, this.runner.platform);
    const pidFile = join(ref.dir, 'qemu.pid');
    rmSync(pidFile, { force: true });
    rmSync(ref.consoleLog, { force: true });
    if (this.runner.platform === 'win32') {
      const child = spawn(this.bin, args, { detached: true, stdio: 'ignore', windowsHide: true });
      child.unref();
      return { ...ref, pid: child.pid! };
    }
    // -daemonize: the parent exits once the VM is set up, so start-up errors (a busy port) surface here.
    await this.runner.run(this.bin, args, { timeoutMs: 60_000 });
    // The parent can exit 0 while the daemon dies during start-up (an -incoming state it cannot load).
    if (!existsSync(pidFile)) throw new BridgeError('EIO', `QEMU exited during start-up (it wrote no ${pidFile})`);
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 0) throw new BridgeError('EIO', `QEMU started but wrote no pid to ${pidFile}`);
    log.debug('started', { pid });
    return { ...ref, pid };
  }

  consoleLogPath(ref: VmRef): string {
    return ref.consoleLog;
  }

  async isRunning(ref: VmRef): Promise<boolean> {
    if (!ref.pid) return false;
    try {
      process.kill(ref.pid, 0);
    } catch {
      return false;
    }
    // Guard against pid reuse: on Linux the process must still be our QEMU.
    if (this.runner.platform === 'linux') {
      try {
        return readFileSync(`/proc/${ref.pid}/cmdline`, 'utf8').includes(ref.id);
      } catch {
        return false;
      }
    }
    return true;
  }

  async reachable(_ref: VmRef, forwards: PortForward[]): Promise<Reachable> {
    return { address: '127.0.0.1', ports: Object.fromEntries(forwards.map((f) => [f.name, f.hostPort])) };
  }

  async stopVm(ref: VmRef, timeoutMs: number): Promise<void> {
    if (!(await this.isRunning(ref))) return;
    const poll = this.ctx.pollMs ?? 100;
    await qmpOnce(qmpSocketPath(ref.dir), 'system_powerdown').catch((e: Error) => log.debug('QMP powerdown failed', { error: e.message }));
    if (await waitUntilFalse(() => this.isRunning(ref), timeoutMs, poll)) return;
    log.warn('the VM did not power off in time: stopping QEMU', { vm: ref.id, timeoutMs });
    await qmpOnce(qmpSocketPath(ref.dir), 'quit').catch(() => process.kill(ref.pid!, 'SIGTERM'));
    if (await waitUntilFalse(() => this.isRunning(ref), 3000, poll)) return;
    process.kill(ref.pid!, 'SIGKILL');
    await waitUntilFalse(() => this.isRunning(ref), 3000, poll);
  }

  /** A QMP connection to a running VM (the caller closes it). */
  qmp(ref: VmRef, timeoutMs = 5000): Promise<QmpClient> {
    return QmpClient.connect(qmpSocketPath(ref.dir), timeoutMs);
  }

  async deleteVm(ref: VmRef): Promise<void> {
    rmSync(qmpSocketPath(ref.dir), { force: true });
    rmSync(seedSocketPath(ref.dir), { force: true });
    rmSync(join(ref.dir, 'qemu.pid'), { force: true });
  }
}
