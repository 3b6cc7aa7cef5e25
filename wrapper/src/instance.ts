/**
 * Instances: start (choose hypervisor → image → config drive → boot → agent → secrets → exports →
 * host mounts), status, stop, and live changes. The CLI commands are thin shells over these functions.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodeConfigDrive } from '../../shared/src/config-drive.js';
import { BridgeError, errorMessage } from '../../shared/src/errors.js';
import { logger } from '../../shared/src/logger.js';
import type { AgentStatus } from '../../shared/src/protocol.js';
import { AgentSession, retryStalledBoot, STALL_MS, waitForAgent, waitForExports } from './agent-client.js';
import { resolveCredentials, type CredentialOptions, type ResolvedCredentials } from './credentials.js';
import { makeDemoDisk } from './demo.js';
import { reachCommands, translateEndpoints, type HostEndpoint } from './endpoints.js';
import { planGuest, SECRET, type Protocol } from './guest-config.js';
import type { ForwardName, HypervisorBackend, PortForward, Reachable, VmRef, VmSpec } from './hypervisors/backend.js';
import { QemuBackend } from './hypervisors/qemu.js';
import { warmStart, WarmStartUnusable, type WarmStartResult } from './warm-start.js';
import { chooseBackend, makeBackend, type HypervisorChoice } from './hypervisors/detect.js';
import { ensureImage, nativeDisk, type ApplianceImage } from './image.js';
import { createInstanceKey, loadInstanceKey } from './keys.js';
import { executeMount, mountPlan, mountSupport, unmount } from './mount.js';
import { allocateForwards } from './ports.js';
import { silentProgress, type Progress } from './progress.js';
import { hostRunner, type CommandRunner } from './runner.js';
import { parseSources, type SourceSpec } from './sources.js';
import {
  instanceDir,
  lastConsoleLog,
  listStates,
  loadState,
  removeInstance,
  requireState,
  saveState,
  stateRoot,
  validateName,
  type HostMount,
  type InstanceState,
} from './state.js';

const log = logger().child({ component: 'instance' });

export interface Context {
  runner: CommandRunner;
  progress: Progress;
  /** QEMU accelerator override (auto, kvm, hvf, whpx, tcg). */
  accel?: string;
}

export function defaultContext(progress: Progress = silentProgress, accel?: string): Context {
  return { runner: hostRunner, progress, ...(accel ? { accel } : {}) };
}

function detectOptions(ctx: Context, probeKernel?: string): Parameters<typeof makeBackend>[1] {
  return {
    runner: ctx.runner,
    probeCacheFile: join(stateRoot(), 'accel-probe.json'),
    ...(ctx.accel ? { accel: ctx.accel } : {}),
    ...(probeKernel ? { probeKernel } : {}),
  };
}

export function backendFor(state: InstanceState, ctx: Context): HypervisorBackend {
  return makeBackend(state.hypervisor, detectOptions(ctx));
}

export interface StartOptions {
  name: string;
  sources: string[];
  exports: Protocol[];
  fat32: boolean;
  hypervisor: HypervisorChoice;
  cacheSize?: number;
  endpoint?: string;
  passphraseFile?: string;
  credentials: CredentialOptions;
  mount: boolean;
  memoryMiB: number;
  cpus: number;
  bootTimeoutMs: number;
  /** Use (or make) a saved VM state where the hypervisor can (QEMU); false: always boot. */
  snapshot?: boolean;
}

export interface StartResult {
  name: string;
  hypervisor: string;
  acceleration?: string;
  imageVersion: string;
  user: string;
  /** Only when bridge generated it (it is shown once and stored nowhere). */
  password?: string;
  chapSecret?: string;
  endpoints: HostEndpoint[];
  mounts: HostMount[];
  /** Why an export was not mounted, and how to reach it instead. */
  notMounted: { endpoint: string; reason: string; commands: string[] }[];
  consoleLog: string;
  /** How the VM came up: booted, booted and saved as a template, or restored from one. */
  boot: BootKind;
  /** ms from the start of the boot to each step (a warm start's from warm-start.ts, then agent, secrets, exports). */
  bootPhases: Record<string, number>;
  seconds: { image: number; boot: number; total: number };
}

export type BootKind = 'cold' | WarmStartResult['mode'];

/** Whether this start can use a saved VM state, and why not. */
export function warmStartPlan(
  o: Pick<StartOptions, 'snapshot'>,
  backend: HypervisorBackend,
  plan: { shares: unknown[] },
  image: Pick<ApplianceImage, 'features'>,
  qemuVersion: string | undefined,
  ctx: Pick<Context, 'runner'>,
): { ok: true; qemuVersion: string } | { ok: false; reason: string } {
  if (o.snapshot === false) return { ok: false, reason: '--no-snapshot' };
  if (process.env.BRIDGE_SNAPSHOT === '0') return { ok: false, reason: 'BRIDGE_SNAPSHOT=0' };
  if (!(backend instanceof QemuBackend)) return { ok: false, reason: `${backend.title} has no saved VM states here (QEMU only)` };
  if (ctx.runner.platform === 'win32') return { ok: false, reason: 'saved VM states need Unix sockets (not on Windows yet)' };
  if (plan.shares.length) return { ok: false, reason: 'folder shares cannot be added to a restored VM' };
  if (!image.features.includes('template')) return { ok: false, reason: 'the appliance image predates templates (rebuild it)' };
  if (!qemuVersion) return { ok: false, reason: 'unknown QEMU version' };
  return { ok: true, qemuVersion };
}

function readSecretFile(path: string, what: string): string {
  try {
    const v = readFileSync(path, 'utf8').split(/\r?\n/)[0] ?? '';
    if (!v) throw new Error('empty');
    return v;
  } catch (e) {
    throw new BridgeError('EINVAL', `${what}: cannot read a value from ${path}: ${(e as Error).message}`);
  }
}

/** Values for the pushed secrets the plan needs; S3 keys come from the host's AWS_* variables. */
function secretValues(names: string[], creds: ResolvedCredentials, o: StartOptions): Map<string, string> {
  const out = new Map<string, string>();
  for (const n of names) {
    if (n === SECRET.password) out.set(n, creds.password);
    else if (n === SECRET.chap) out.set(n, creds.chapSecret);
    else if (n === SECRET.passphrase) out.set(n, readSecretFile(o.passphraseFile!, '--passphrase-file'));
    else if (n === SECRET.s3AccessKey || n === SECRET.s3SecretKey) {
      const env = n === SECRET.s3AccessKey ? 'AWS_ACCESS_KEY_ID' : 'AWS_SECRET_ACCESS_KEY';
      const v = process.env[env];
      if (!v) throw new BridgeError('EINVAL', `store:s3 sources need ${env} in the environment (pushed to the appliance's memory, never written)`);
      out.set(n, v);
    }
  }
  return out;
}

async function isAlive(state: InstanceState, ctx: Context): Promise<boolean> {
  return backendFor(state, ctx).isRunning(state.vm);
}

function takenPorts(except: string): Set<number> {
  return new Set(
    listStates()
      .filter((s) => s.name !== except)
      .flatMap((s) => s.forwards.map((f) => f.hostPort)),
  );
}

export async function startInstance(o: StartOptions, ctx: Context): Promise<StartResult> {
  const t0 = Date.now();
  const name = validateName(o.name);
  const { progress, runner } = ctx;
  if (o.fat32 && !o.exports.includes('iscsi')) throw new BridgeError('EINVAL', '--fat32 exports a FAT32 volume over iSCSI: add iscsi to --export');
  const existing = loadState(name);
  if (existing) {
    if (await isAlive(existing, ctx)) throw new BridgeError('EBUSY', `instance "${name}" is already running (bridge stop ${name}, or choose another --name)`);
    log.info('removing a dead instance of the same name', { name });
    await cleanupInstance(existing, ctx);
  }
  const creds = await resolveCredentials(o.credentials);
  let sources: SourceSpec[] = parseSources(o.sources);
  if (o.passphraseFile && !sources.some((s) => s.kind === 's3' || s.kind === 'store-dir'))
    throw new BridgeError('EINVAL', '--passphrase-file applies to store: sources only');

  progress.phase('appliance image');
  const image: ApplianceImage = await ensureImage((p) => progress.phase(`image [${p.step}/${p.steps}] ${p.message}`));
  progress.phase('detecting hypervisors');
  // QEMU's accelerator is accepted only if it boots the appliance's own kernel.
  const { backend, detection } = await chooseBackend(o.hypervisor, detectOptions(ctx, image.kernel));
  const accel = backend.name === 'qemu' ? detection.acceleration : undefined;
  const bootDisk = await nativeDisk(image, backend, (p) => progress.percent(`converting the image to ${backend.nativeDiskFormat}`, p));
  const tImage = Date.now();

  const dir = instanceDir(name);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (!sources.length) {
    progress.phase('making the demo disk (ext4 with a README)');
    sources = [{ kind: 'disk', name: 'demo', path: await makeDemoDisk(runner, dir), readOnly: false }];
  }
  const plan = planGuest({
    sources,
    exports: o.exports,
    fat32: o.fat32,
    user: creds.user,
    ...(o.endpoint ? { endpoint: o.endpoint } : {}),
    ...(o.cacheSize !== undefined ? { cacheSize: o.cacheSize } : {}),
    encrypted: o.passphraseFile !== undefined,
    guestHas9p: image.features.includes('9p'),
    backend,
    guestPorts: image.guest,
  });
  const secrets = secretValues(plan.secrets, creds, o);
  // The agent's log (on the console: bridge logs) in more detail, for diagnosing a boot.
  if (process.env.BRIDGE_GUEST_LOG === 'debug' || process.env.BRIDGE_GUEST_LOG === 'json')
    plan.agent.log = { level: process.env.BRIDGE_GUEST_LOG === 'debug' ? 'debug' : 'info', json: true };

  const key = createInstanceKey(name);
  const wanted: { name: ForwardName; guestPort: number }[] = [{ name: 'ssh', guestPort: image.guest.sshPort }];
  const guestPort: Record<Protocol, number> = { smb: image.guest.smbPort, nfs: image.guest.nfsPort, iscsi: image.guest.iscsiPort };
  for (const p of o.exports) wanted.push({ name: p, guestPort: guestPort[p] });

  // The VM without its disks: a cold boot adds the config drive and the sources; a warm start adds
  // the template's config drive and hot-plugs the sources after the restore.
  const base: VmSpec = {
    name,
    dir,
    bootDisk: { path: bootDisk, format: backend.nativeDiskFormat },
    ...(backend.name === 'qemu' ? { kernel: { kernel: image.kernel, initrd: image.initrd, cmdline: image.cmdline } } : {}),
    memoryMiB: o.memoryMiB,
    cpus: o.cpus,
    disks: [],
    shares: plan.shares,
    forwards: [],
    ...(accel ? { accel } : {}),
  };

  progress.phase(`booting the appliance ${image.version} with ${detection.title}${accel ? ` (${accel})` : ''}`);
  const tBoot = Date.now();
  let ref: VmRef | undefined;
  let state: InstanceState | undefined;
  /** Starts a VM with free host ports and records it at once, so that `bridge stop` works from here on. */
  const launch = async (spec: VmSpec): Promise<{ ref: VmRef; forwards: PortForward[]; reach: Reachable }> => {
    let vm = await backend.createVm(spec);
    let forwards: PortForward[] = [];
    // A picked port can be taken by someone else before the hypervisor binds it: pick again.
    for (let attempt = 1; ; attempt++) {
      forwards = await allocateForwards(wanted, takenPorts(name));
      try {
        vm = await backend.startVm(vm, { ...spec, forwards });
        break;
      } catch (e) {
        if (attempt >= 3 || !/host forwarding|address already in use/i.test(errorMessage(e))) throw e;
        log.debug('port taken, retrying', { error: errorMessage(e) });
      }
    }
    ref = vm;
    state = {
      name,
      hypervisor: backend.name,
      vm,
      forwards,
      image: { version: image.version, hash: image.hash, manifest: image.manifestPath },
      guest: { sshUser: image.guest.sshUser, ...(image.features.includes('power-button') ? { powerButton: true } : {}) },
      startedAt: new Date().toISOString(),
      phase: 'starting',
      sources: sources.map((s) => `${s.name}=${s.kind === 's3' ? s.url : s.path}`),
      exports: o.exports,
      user: creds.user,
      endpoints: [],
      mounts: [],
    };
    const reach = await backend.reachable(vm, forwards);
    state.reachable = reach;
    saveState(state);
    return { ref: vm, forwards, reach };
  };
  try {
    let booted: { session: AgentSession; reach: Reachable; boot: BootKind; phases?: Record<string, number> } | undefined;
    const warm = warmStartPlan(o, backend, plan, image, detection.version, ctx);
    if (warm.ok) {
      try {
        const w = await warmStart({
          backend: backend as QemuBackend,
          spec: base,
          disks: plan.disks,
          image: { hash: image.hash, version: image.version, sshUser: image.guest.sshUser, sshPort: image.guest.sshPort },
          qemuVersion: warm.qemuVersion,
          platform: runner.platform,
          launch,
          instance: { name, publicKey: key.publicKey, agent: plan.agent },
          bootTimeoutMs: o.bootTimeoutMs,
          progress,
        });
        booted = { session: w.session, reach: w.reach, boot: w.mode, phases: w.phases };
      } catch (e) {
        if (!(e instanceof WarmStartUnusable)) throw e;
        log.warn('warm start not possible: booting cold', { reason: e.message });
        progress.phase('booting cold');
      }
    } else log.debug('cold boot', { reason: warm.reason });
    if (!booted) {
      const drive = encodeConfigDrive({ version: 1, name, sshAuthorizedKey: key.publicKey, sshPort: image.guest.sshPort, agent: plan.agent });
      let configDisk = join(dir, 'config.img');
      writeFileSync(configDisk, drive);
      if (backend.nativeDiskFormat !== 'raw') {
        const native = join(dir, `config.${backend.nativeDiskFormat === 'parallels' ? 'hdd' : backend.nativeDiskFormat}`);
        await backend.convertImage(configDisk, native);
        configDisk = native;
      }
      const disks = [{ path: configDisk, format: backend.nativeDiskFormat, serial: 'bridge-config', readOnly: true }, ...plan.disks];
      booted = await retryStalledBoot(
        async () => {
          const started = await launch({ ...base, disks });
          const session = await waitForAgent({
            target: { host: started.reach.address, port: started.reach.ports.ssh!, user: image.guest.sshUser, privateKey: key.privateKey },
            timeoutMs: o.bootTimeoutMs,
            consoleLog: started.ref.consoleLog,
            alive: () => backend.isRunning(started.ref),
            onPhase: (p) => progress.phase(p),
            stallMs: STALL_MS,
          });
          return { session, reach: started.reach, boot: 'cold' as const };
        },
        async () => (ref ? backend.stopVm(ref, 1000) : undefined),
      );
    }
    const { session, reach } = booted;
    if (!ref || !state) throw new BridgeError('EIO', 'internal: the VM was not recorded');
    state.hostKeySha256 = session.hostKeySha256;
    const tAgent = Date.now();
    const phases: Record<string, number> = { ...(booted.phases ?? {}) };
    const mark = (what: string): void => {
      phases[what] = Date.now() - tBoot;
    };
    mark('agent');
    let status: AgentStatus;
    try {
      // At once: the agent keeps secrets that arrive while it starts for its first build.
      progress.phase(`pushing ${secrets.size} secret(s) and starting the exports`);
      for (const [n, v] of secrets) await session.putSecret(n, v);
      mark('secrets');
      status = await waitForExports(session, 60_000);
      mark('exports');
    } finally {
      session.close();
    }
    state.endpoints = translateEndpoints(status.exports, reach);
    state.phase = 'running';
    saveState(state);
    for (const e of status.exports.filter((x) => x.health !== 'ok'))
      log.warn('export is not serving', { export: e.name, health: e.health, error: e.error ?? '' });

    const result: StartResult = {
      name,
      hypervisor: backend.name,
      ...(accel ? { acceleration: accel } : {}),
      imageVersion: status.imageVersion ?? image.version,
      user: creds.user,
      ...(creds.generated ? { password: creds.password } : {}),
      ...(creds.chapGenerated && o.exports.includes('iscsi') ? { chapSecret: creds.chapSecret } : {}),
      endpoints: state.endpoints,
      mounts: [],
      notMounted: [],
      consoleLog: ref.consoleLog,
      boot: booted.boot,
      bootPhases: phases,
      seconds: { image: (tImage - t0) / 1000, boot: (tAgent - tBoot) / 1000, total: 0 },
    };
    if (o.mount) await mountAll(state, result, creds, ctx);
    else for (const ep of state.endpoints) result.notMounted.push({ endpoint: ep.url, reason: '--no-mount', commands: reachCommands(ep, creds.user) });
    saveState(state);
    result.seconds.total = (Date.now() - t0) / 1000;
    return result;
  } catch (e) {
    // Leave nothing running; keep the console log for `bridge logs` and record why.
    if (ref) await backend.stopVm(ref, 1000).catch(() => undefined);
    if (state) {
      state.phase = 'failed';
      state.error = errorMessage(e);
      saveState(state);
    }
    throw e;
  }
}

async function mountAll(state: InstanceState, result: StartResult, creds: ResolvedCredentials, ctx: Context): Promise<void> {
  for (const ep of state.endpoints) {
    if (ep.health !== 'ok') continue;
    const support = await mountSupport(ctx.runner, ep.protocol);
    if (!support.ok) {
      result.notMounted.push({ endpoint: ep.url, reason: support.reason ?? 'unsupported', commands: reachCommands(ep, creds.user) });
      continue;
    }
    try {
      // Windows maps SMB shares to drive letters from Z: down; iSCSI disks get theirs from Windows.
      const mountpoint = ctx.runner.platform === 'win32' ? `${String.fromCharCode(90 - state.mounts.length)}:` : join(instanceDir(state.name), 'mnt', ep.name);
      const m = await executeMount(ctx.runner, mountPlan(ctx.runner.platform, ep, creds, mountpoint));
      state.mounts.push(m);
      result.mounts.push(m);
      saveState(state);
    } catch (e) {
      result.notMounted.push({ endpoint: ep.url, reason: errorMessage(e), commands: reachCommands(ep, creds.user) });
    }
  }
}

export interface StatusEntry {
  name: string;
  hypervisor: string;
  state: 'running' | 'starting' | 'failed' | 'dead';
  error?: string;
  uptimeSeconds?: number;
  imageVersion: string;
  pid?: number;
  sshPort?: number;
  agent?: { ready: boolean; imageVersion?: string; sources: AgentStatus['sources']; stages: AgentStatus['stages'] };
  cache: { source: string; used?: number; size?: number }[];
  endpoints: HostEndpoint[];
  mounts: HostMount[];
}

async function connect(state: InstanceState, timeoutMs = 5000): Promise<AgentSession> {
  const key = loadInstanceKey(state.name);
  if (!key) throw new BridgeError('ENOENT', `the SSH key of instance "${state.name}" is missing`);
  const reach = state.reachable;
  if (!reach?.ports.ssh) throw new BridgeError('ENOENT', `instance "${state.name}" has no SSH forward recorded`);
  return AgentSession.connect(
    {
      host: reach.address,
      port: reach.ports.ssh,
      user: state.guest.sshUser,
      privateKey: key.privateKey,
      ...(state.hostKeySha256 ? { hostKeySha256: state.hostKeySha256 } : {}),
    },
    timeoutMs,
  );
}

/** Opens an SSH session to a running instance's agent, runs fn, closes. */
export async function withAgent<T>(name: string, ctx: Context, fn: (s: AgentSession, state: InstanceState) => Promise<T>): Promise<T> {
  const state = requireState(name);
  if (!(await isAlive(state, ctx))) throw new BridgeError('ENOENT', `instance "${name}" is not running (bridge status)`);
  const session = await connect(state);
  try {
    return await fn(session, state);
  } finally {
    session.close();
  }
}

function cacheOf(status: AgentStatus): StatusEntry['cache'] {
  return status.sources
    .filter((s) => s.kind === 'store' || s.details?.cacheUsed !== undefined)
    .map((s) => {
      const d = (s.details ?? {}) as Record<string, unknown>;
      const num = (...keys: string[]): number | undefined => keys.map((k) => d[k]).find((v): v is number => typeof v === 'number');
      const used = num('cacheUsed', 'cacheBytes', 'cacheUsedBytes');
      const size = num('cacheSize', 'cacheLimit', 'cacheSizeBytes');
      return { source: s.name, ...(used !== undefined ? { used } : {}), ...(size !== undefined ? { size } : {}) };
    });
}

export async function instanceStatus(state: InstanceState, ctx: Context, live = true): Promise<StatusEntry> {
  const alive = await isAlive(state, ctx);
  const entry: StatusEntry = {
    name: state.name,
    hypervisor: state.hypervisor,
    state: !alive ? (state.phase === 'failed' ? 'failed' : 'dead') : state.phase,
    imageVersion: state.image.version,
    ...(state.error ? { error: state.error } : {}),
    ...(state.vm.pid ? { pid: state.vm.pid } : {}),
    ...(state.reachable?.ports.ssh ? { sshPort: state.reachable.ports.ssh } : {}),
    cache: [],
    endpoints: state.endpoints,
    mounts: state.mounts,
  };
  if (alive) entry.uptimeSeconds = Math.round((Date.now() - Date.parse(state.startedAt)) / 1000);
  if (alive && live && state.phase === 'running' && state.reachable) {
    try {
      const session = await connect(state, 4000);
      try {
        const s = await session.status();
        entry.agent = { ready: s.ready, ...(s.imageVersion ? { imageVersion: s.imageVersion } : {}), sources: s.sources, stages: s.stages };
        entry.cache = cacheOf(s);
        entry.endpoints = translateEndpoints(s.exports, state.reachable);
      } finally {
        session.close();
      }
    } catch (e) {
      entry.error = `agent not reachable: ${errorMessage(e)}`;
    }
  }
  return entry;
}

export async function statusAll(ctx: Context, live = true): Promise<StatusEntry[]> {
  return Promise.all(listStates().map((s) => instanceStatus(s, ctx, live)));
}

/** Unmounts, powers the guest off (the agent stops its exports and flushes first), forces after timeoutMs. */
export async function stopInstance(
  name: string,
  ctx: Context,
  timeoutMs = 20_000,
): Promise<{ name: string; forced: boolean; problems: string[]; seconds: number }> {
  const t0 = Date.now();
  const state = requireState(name);
  const problems: string[] = [];
  for (const m of [...state.mounts].reverse()) {
    const p = await unmount(ctx.runner, m);
    if (p) problems.push(p);
  }
  const backend = backendFor(state, ctx);
  let forced = false;
  if (await backend.isRunning(state.vm)) {
    let asked = false;
    // QEMU's stopVm presses the ACPI power button first; an appliance that handles it powers off in
    // the same order as when asked over SSH, without the SSH connection.
    if (state.guest.powerButton && state.hypervisor === 'qemu') asked = true;
    else if (state.reachable) {
      try {
        const session = await connect(state, 3000);
        await session.powerOff();
        session.close();
        asked = true;
      } catch (e) {
        problems.push(`could not ask the guest to power off (${errorMessage(e)}): forcing`);
      }
    }
    const graceful = Date.now();
    await backend.stopVm(state.vm, asked ? timeoutMs : 1000);
    forced = !asked || Date.now() - graceful >= timeoutMs;
  }
  await cleanupInstance(state, ctx);
  return { name, forced, problems, seconds: (Date.now() - t0) / 1000 };
}

async function cleanupInstance(state: InstanceState, ctx: Context): Promise<void> {
  const backend = backendFor(state, ctx);
  if (await backend.isRunning(state.vm)) await backend.stopVm(state.vm, 1000);
  await backend.deleteVm(state.vm).catch((e: unknown) => log.warn('could not delete the VM', { error: errorMessage(e) }));
  // The last console log outlives the instance, for `bridge logs NAME` after a failed start or a stop.
  if (existsSync(state.vm.consoleLog)) {
    mkdirSync(join(stateRoot(), 'logs'), { recursive: true });
    copyFileSync(state.vm.consoleLog, lastConsoleLog(state.name));
  }
  removeInstance(state.name);
}

export async function setCacheSize(name: string, bytes: number, ctx: Context, source?: string): Promise<void> {
  await withAgent(name, ctx, (s) => s.setCacheSize(bytes, source));
}

/** Pushes a new share password (and CHAP secret when it is the password) to a running instance. */
export async function changeCredentials(name: string, o: CredentialOptions, ctx: Context): Promise<ResolvedCredentials> {
  const state = requireState(name);
  if (o.user && o.user !== state.user)
    throw new BridgeError('EINVAL', `--user: instance "${name}" serves user "${state.user}"; users cannot be renamed while running`);
  const creds = await resolveCredentials({ ...o, user: state.user });
  await withAgent(name, ctx, async (s) => {
    await s.putSecret(SECRET.password, creds.password);
    if (state.exports.includes('iscsi')) await s.putSecret(SECRET.chap, creds.chapSecret);
  });
  return creds;
}
