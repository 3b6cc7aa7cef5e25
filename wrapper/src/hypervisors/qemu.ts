/**
 * QEMU: the backend that runs everywhere (and the one tested here, with TCG). Direct kernel boot of the
 * appliance's kernel + initramfs, the boot disk behind a throw-away snapshot, user-mode networking with
 * host port forwards on 127.0.0.1, the console on a file, QMP on a Unix socket for a clean power-off.
 * QEMU daemonizes itself and its pid is recorded, so the VM outlives the CLI.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
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
  type VmRef,
  type VmSpec,
} from './backend.js';

const log = logger().child({ component: 'qemu' });

export const QEMU_ACCELS = ['kvm', 'hvf', 'whpx', 'tcg'] as const;

export interface QemuContext extends BackendContext {
  /** Where the KVM probe's verdict is cached (per QEMU version and host kernel). */
  probeCacheFile?: string;
  /** Forced accelerator (`--accel` or BRIDGE_QEMU_ACCEL). */
  accel?: string;
  /** Time a KVM probe may take; this machine's paravirtual /dev/kvm needs > 5 s for one boot sector. */
  kvmProbeTimeoutMs?: number;
}

export function qemuBinary(platform: NodeJS.Platform): string {
  return platform === 'win32' ? 'qemu-system-x86_64.exe' : 'qemu-system-x86_64';
}

/** The QMP socket; Unix socket paths are limited to ~107 bytes, so long instance dirs fall back to /tmp. */
export function qmpSocketPath(dir: string): string {
  const p = join(dir, 'qmp.sock');
  if (p.length < 100) return p;
  return join(tmpdir(), `bridge-qmp-${createHash('sha256').update(dir).digest('hex').slice(0, 16)}.sock`);
}

/** The full QEMU command line for a VM (pure: unit-tested). */
export function qemuArgs(spec: VmSpec, platform: NodeJS.Platform): string[] {
  const accel = spec.accel ?? 'tcg';
  const args = ['-name', `${vmName(spec.name)},process=${vmName(spec.name)}`];
  args.push('-machine', 'q35', '-accel', accel, '-cpu', accel === 'tcg' ? 'max' : 'host');
  args.push('-m', String(spec.memoryMiB), '-smp', String(spec.cpus));
  args.push('-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none');
  args.push('-serial', `file:${join(spec.dir, 'console.log')}`);
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
  return args;
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

  /** Boots a one-sector guest with the accelerator, with a time limit; the verdict is cached. */
  async probeAccel(accel: string, version: string, notes: string[]): Promise<boolean> {
    const key = `${accel}|${version}|${release()}`;
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
    const timeoutMs = this.ctx.kvmProbeTimeoutMs ?? 3000;
    let ok = false;
    let note: string;
    try {
      const img = join(dir, 'probe.img');
      writeFileSync(img, probeBootSector());
      const args = ['-accel', accel, '-machine', 'pc', '-nodefaults', '-no-user-config', '-display', 'none', '-m', '16'];
      args.push('-drive', `file=${img},format=raw,if=floppy`, '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04');
      const started = Date.now();
      const r = await this.runner.run(this.bin, args, { check: false, timeoutMs }).catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }));
      ok = r.code === 99;
      note = ok
        ? `${accel} works (probe guest ran in ${Date.now() - started} ms)`
        : `${accel} is present but did not run a probe guest within ${timeoutMs} ms: using TCG (force with --accel ${accel})`;
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
    await qmp(qmpSocketPath(ref.dir), 'system_powerdown').catch((e: Error) => log.debug('QMP powerdown failed', { error: e.message }));
    if (await waitUntilFalse(() => this.isRunning(ref), timeoutMs, poll)) return;
    log.warn('the VM did not power off in time: stopping QEMU', { vm: ref.id, timeoutMs });
    await qmp(qmpSocketPath(ref.dir), 'quit').catch(() => process.kill(ref.pid!, 'SIGTERM'));
    if (await waitUntilFalse(() => this.isRunning(ref), 3000, poll)) return;
    process.kill(ref.pid!, 'SIGKILL');
    await waitUntilFalse(() => this.isRunning(ref), 3000, poll);
  }

  async deleteVm(ref: VmRef): Promise<void> {
    rmSync(qmpSocketPath(ref.dir), { force: true });
    rmSync(join(ref.dir, 'qemu.pid'), { force: true });
  }
}

/** Sends one QMP command (after the capabilities handshake) and resolves on its reply. */
export function qmp(socketPath: string, command: string, timeoutMs = 3000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = connect(socketPath);
    let buf = '';
    let step = 0;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new BridgeError('EIO', `QMP ${command}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const done = (err?: Error, value?: unknown): void => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    sock.on('error', (e) => done(new BridgeError('EIO', `QMP ${socketPath}: ${e.message}`)));
    sock.on('close', () => (step >= 2 ? done(undefined, null) : undefined));
    sock.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const msg = JSON.parse(line) as { QMP?: unknown; return?: unknown; error?: { desc: string } };
        if (msg.error) return done(new BridgeError('EIO', `QMP ${command}: ${msg.error.desc}`));
        if (msg.QMP && step === 0) {
          step = 1;
          sock.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
        } else if ('return' in msg && step === 1) {
          step = 2;
          sock.write(JSON.stringify({ execute: command }) + '\n');
        } else if ('return' in msg && step === 2) {
          return done(undefined, msg.return);
        }
      }
    });
  });
}
