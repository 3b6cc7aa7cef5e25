/**
 * Test helper: build (or reuse) the appliance image and boot it under QEMU/TCG with user networking,
 * exactly as docs/appliance.md tells the host wrapper to. One VM per test file; stopped by PID.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import ssh2 from 'ssh2';
import { encodeConfigDrive } from '../../shared/src/config-drive.js';
import type { AgentConfigInput } from '../../shared/src/config.js';
import { freePort } from '../helpers/ports.js';
import { generateEd25519 } from '../../wrapper/src/keys.js';

const { Client } = ssh2;
const run = promisify(execFile);
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export interface Manifest {
  version: string;
  hash: string;
  kernel: string;
  initrd: string;
  disk: string;
  cmdline: string;
  compressedSize: number;
  sizes: Record<string, number>;
  guest: { sshUser: string; sshPort: number; smbPort: number; nfsPort: number; iscsiPort: number };
}

export interface BuiltImage {
  manifestPath: string;
  dir: string;
  manifest: Manifest;
  /** Wall time of build.sh (a cache hit takes a few seconds). */
  buildMs: number;
}

/** Runs image-build/build.sh; the last stdout line is the manifest's path. */
export async function buildImage(args: string[] = []): Promise<BuiltImage & { log: string }> {
  const t0 = performance.now();
  const { stdout, stderr } = await run('bash', [join(REPO, 'image-build/build.sh'), ...args], { cwd: REPO, maxBuffer: 16 << 20, timeout: 20 * 60_000 });
  const manifestPath = stdout.trim().split('\n').pop()!;
  return {
    manifestPath,
    dir: dirname(manifestPath),
    manifest: JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest,
    buildMs: performance.now() - t0,
    log: stderr,
  };
}

export interface BootOptions {
  agent?: AgentConfigInput;
  /** Extra disks, attached read-write with serials bridge-src0, bridge-src1, ... */
  disks?: string[];
  /** Guest ports to forward from 127.0.0.1 (22 is always forwarded). */
  forward?: number[];
  memoryMiB?: number;
  cpus?: number;
  /** direct: -kernel/-initrd/-append (default); disk: BIOS → MBR → syslinux, as other hypervisors boot. */
  boot?: 'direct' | 'disk';
  /** virtio with serial bridge-config (default), or IDE without a serial (found by its magic line). */
  configDriveBus?: 'virtio' | 'ide';
}

export interface ApplianceVm {
  pid: number;
  sshPort: number;
  /** Host port for each forwarded guest port. */
  ports: Map<number, number>;
  privateKey: string;
  launchedAt: number;
  console(): string;
  exited: Promise<number | null>;
  close(): Promise<void>;
}

const DEFAULT_AGENT: AgentConfigInput = { version: 1, sources: [{ kind: 'memory', name: 'scratch', size: '16M' }] };

export async function bootAppliance(image: BuiltImage, opts: BootOptions = {}): Promise<ApplianceVm> {
  const work = mkdtempSync(join(tmpdir(), 'bridge-vm-'));
  const keys = generateEd25519('bridge-test');
  const configDrive = join(work, 'config.img');
  writeFileSync(configDrive, encodeConfigDrive({ version: 1, name: 'bridge-test', sshAuthorizedKey: keys.public.trim(), agent: opts.agent ?? DEFAULT_AGENT }));
  const consoleLog = join(work, 'console.log');
  const ports = new Map<number, number>();
  for (const guestPort of [22, ...(opts.forward ?? [])]) ports.set(guestPort, await freePort());
  const m = image.manifest;
  const args = [
    ...['-accel', 'tcg', '-cpu', 'max', '-m', String(opts.memoryMiB ?? 1024), '-smp', String(opts.cpus ?? 2)],
    ...['-nodefaults', '-no-user-config', '-display', 'none', '-serial', `file:${consoleLog}`, '-no-reboot'],
    ...(opts.boot === 'disk' ? [] : ['-kernel', join(image.dir, m.kernel), '-initrd', join(image.dir, m.initrd), '-append', m.cmdline]),
    ...[
      '-drive',
      `file=${join(image.dir, m.disk)},if=none,id=root,format=raw,readonly=on`,
      '-device',
      `virtio-blk-pci,drive=root,serial=bridge-root${opts.boot === 'disk' ? ',bootindex=0' : ''}`,
    ],
    ...(opts.configDriveBus === 'ide'
      ? ['-drive', `file=${configDrive},if=ide,index=1,format=raw,media=disk`]
      : ['-drive', `file=${configDrive},if=none,id=cfg,format=raw,readonly=on`, '-device', 'virtio-blk-pci,drive=cfg,serial=bridge-config']),
    ...(opts.disks ?? []).flatMap((d, i) => [
      '-drive',
      `file=${d},if=none,id=src${i},format=raw,cache=none,aio=threads`,
      '-device',
      `virtio-blk-pci,drive=src${i},serial=bridge-src${i}`,
    ]),
    '-nic',
    `user,model=virtio-net-pci,${[...ports].map(([g, h]) => `hostfwd=tcp:127.0.0.1:${h}-:${g}`).join(',')}`,
  ];
  const launchedAt = performance.now();
  const child: ChildProcess = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  let finalConsole: string | undefined;
  const readConsole = (): string => {
    if (finalConsole !== undefined) return finalConsole;
    try {
      return readFileSync(consoleLog, 'utf8') + (stderr ? `\n[qemu stderr] ${stderr}` : '');
    } catch {
      return stderr;
    }
  };
  const vm: ApplianceVm = {
    pid: child.pid!,
    sshPort: ports.get(22)!,
    ports,
    privateKey: keys.private,
    launchedAt,
    console: readConsole,
    exited,
    async close() {
      if (child.exitCode === null && child.signalCode === null) {
        // Clean power-off first; the PID is the fallback.
        await sshExec(vm, 'bridge-agent guest poweroff', 10_000).catch(() => undefined);
        const timer = setTimeout(() => process.kill(child.pid!, 'SIGKILL'), 20_000);
        await exited;
        clearTimeout(timer);
      }
      finalConsole = readConsole();
      rmSync(work, { recursive: true, force: true });
    },
  };
  return vm;
}

export interface ExecResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface SshAuth {
  privateKey?: string;
  password?: string;
}

/** One SSH connection per command: simple, and each call proves login still works. */
export function sshExec(
  vm: ApplianceVm,
  command: string,
  timeoutMs = 60_000,
  auth: SshAuth = { privateKey: vm.privateKey },
  stdin?: string,
): Promise<ExecResult> {
  return new Promise((resolvePromise, reject) => {
    const conn = new Client();
    const timer = setTimeout(() => {
      conn.end();
      reject(new Error(`ssh ${command}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    conn
      .on('ready', () => {
        conn.exec(command, (err, stream) => {
          if (err) {
            clearTimeout(timer);
            conn.end();
            return reject(err);
          }
          let stdout = '';
          let stderr = '';
          stream.on('data', (d: Buffer) => (stdout += d.toString()));
          stream.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
          stream.on('close', (code: number | null) => {
            clearTimeout(timer);
            conn.end();
            resolvePromise({ code, stdout, stderr });
          });
          if (stdin !== undefined) stream.end(stdin);
          else stream.end();
        });
      })
      .on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      })
      .connect({ host: '127.0.0.1', port: vm.sshPort, username: 'root', readyTimeout: timeoutMs, tryKeyboard: false, ...auth });
  });
}

/** Polls until `command` succeeds over SSH; the error carries the console tail. */
export async function waitForSsh(vm: ApplianceVm, command = 'true', timeoutMs = 90_000): Promise<ExecResult> {
  const deadline = performance.now() + timeoutMs;
  let last: unknown;
  let exited = false;
  void vm.exited.then(() => (exited = true));
  while (performance.now() < deadline && !exited) {
    try {
      const r = await sshExec(vm, command, Math.max(1000, Math.min(15_000, deadline - performance.now())));
      if (r.code === 0) return r;
      last = new Error(`exit ${r.code}: ${r.stderr}`);
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(
    `appliance not reachable over SSH ${exited ? '(QEMU exited)' : `after ${timeoutMs} ms`} (${String(last)}); console tail:\n${vm.console().split('\n').slice(-30).join('\n')}`,
  );
}

/**
 * One request to the agent's control socket, forwarded over SSH (OpenSSH streamlocal forwarding): no
 * process starts in the guest, unlike `bridge-agent secret put` over exec, which loads the whole CLI.
 */
export function controlOverSsh(vm: ApplianceVm, request: { method: string; params?: unknown }, timeoutMs = 60_000): Promise<unknown> {
  return new Promise((resolvePromise, reject) => {
    const conn = new Client();
    const fail = (e: unknown): void => {
      clearTimeout(timer);
      conn.end();
      reject(e instanceof Error ? e : new Error(String(e)));
    };
    const timer = setTimeout(() => fail(new Error(`control ${request.method}: timed out`)), timeoutMs);
    conn
      .on('ready', () => {
        conn.openssh_forwardOutStreamLocal('/run/bridge/control.sock', (err, stream) => {
          if (err) return fail(err);
          let buf = '';
          stream.on('data', (d: Buffer) => {
            buf += d.toString();
            const nl = buf.indexOf('\n');
            if (nl < 0) return;
            clearTimeout(timer);
            conn.end();
            const res = JSON.parse(buf.slice(0, nl)) as { ok: boolean; result?: unknown; error?: { message: string } };
            if (res.ok) resolvePromise(res.result);
            else reject(new Error(`control ${request.method}: ${res.error?.message}`));
          });
          stream.on('error', fail);
          stream.write(JSON.stringify({ id: 1, ...request }) + '\n');
        });
      })
      .on('error', fail)
      .connect({ host: '127.0.0.1', port: vm.sshPort, username: 'root', privateKey: vm.privateKey, readyTimeout: timeoutMs });
  });
}
