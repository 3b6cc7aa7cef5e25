/**
 * Warm starts (QEMU): instead of booting, start from a saved VM state — a *template* — in which the
 * appliance has booted, sshd listens and the agent has loaded its code and waits for `configure`.
 *
 * First start with a given template key (templates.ts): boot with a template config drive (no agent
 * configuration), wait for the agent to report `awaitingConfiguration`, save the paused VM with QMP
 * `migrate` (~1.5 s), then go on with that same VM as below. Later starts: QEMU `-incoming` the saved
 * state (the file is verified meanwhile: SHA-256), then as below.
 *
 * Both then make the copy an instance, in this order: `cont`; the seed line on the second serial port
 * (restore-seed.ts: kernel RNG, OpenSSL, clock, new host key — before any network connection); SSH
 * with the template's key, pinned to the new host key; hot-plug the source disks (not in the template);
 * `configure` (the instance's key replaces the template's, hostname, agent configuration). The caller
 * pushes secrets and waits for exports exactly as after a cold boot.
 *
 * A template that cannot be used (missing, truncated, corrupt, refused by QEMU, or a copy that does
 * not answer its seed) throws WarmStartUnusable; the caller logs it and boots cold.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { encodeConfigDrive } from '../../shared/src/config-drive.js';
import { BridgeError, errorMessage } from '../../shared/src/errors.js';
import { logger } from '../../shared/src/logger.js';
import { AgentSession, retryStalledBoot, STALL_MS, waitForAgent } from './agent-client.js';
import type { PortForward, Reachable, VmDisk, VmRef, VmSpec } from './hypervisors/backend.js';
import { awaitIncoming, hotAddDisks, QemuBackend, saveState, SEED_DEVICE, seedSocketPath, templateIdentity } from './hypervisors/qemu.js';
import type { QmpClient } from './hypervisors/qmp.js';
import { generateEd25519 } from './keys.js';
import type { Progress } from './progress.js';
import { sendRestoreSeed } from './restore-seed.js';
import {
  commitGeneration,
  findTemplate,
  newGeneration,
  removeTemplate,
  templateKey,
  touchTemplate,
  verifyTemplate,
  writeGenerationKey,
  type Template,
  type TemplateIdentity,
} from './templates.js';

const log = logger().child({ component: 'warm-start' });

export const TEMPLATE_HOSTNAME = 'bridge-template';

/** The template could not be used: boot cold instead (after removing it when `broken`). */
export class WarmStartUnusable extends BridgeError {
  constructor(
    message: string,
    readonly broken: boolean,
  ) {
    super('EIO', message);
  }
}

export interface WarmStartOptions {
  backend: QemuBackend;
  /** The instance's VM without config drive or source disks (its shares must be empty). */
  spec: VmSpec;
  /** Source disks, hot-plugged before `configure`. */
  disks: VmDisk[];
  image: { hash: string; version: string; sshUser: string; sshPort: number };
  qemuVersion: string;
  platform: NodeJS.Platform;
  /** Starts the VM with free host ports (retrying on a clash); the caller records it for `bridge stop`. */
  launch: (spec: VmSpec) => Promise<{ ref: VmRef; forwards: PortForward[]; reach: Reachable }>;
  instance: { name: string; publicKey: string; agent: unknown };
  bootTimeoutMs: number;
  progress: Progress;
}

export interface WarmStartResult {
  ref: VmRef;
  forwards: PortForward[];
  reach: Reachable;
  session: AgentSession;
  hostKeySha256: string;
  mode: 'template-created' | 'restored';
  templateKey: string;
  /** Milliseconds from launching QEMU to each step. */
  phases: Record<string, number>;
}

/** The template's config drive in the device list (its path is the generation's). */
function templateSpec(o: WarmStartOptions, configDrive: string, restoreFrom?: string): VmSpec {
  return {
    ...o.spec,
    disks: [{ path: configDrive, format: 'raw', serial: 'bridge-config', readOnly: true }],
    seedSocket: seedSocketPath(o.spec.dir),
    ...(restoreFrom ? { restoreFrom } : {}),
  };
}

export function templateIdentityOf(o: Pick<WarmStartOptions, 'spec' | 'image' | 'qemuVersion' | 'platform'>): TemplateIdentity {
  const spec: VmSpec = { ...o.spec, disks: [{ path: '/CONFIG', format: 'raw', serial: 'bridge-config', readOnly: true }], seedSocket: '/SEED' };
  return {
    imageHash: o.image.hash,
    imageVersion: o.image.version,
    qemuVersion: o.qemuVersion,
    accel: o.spec.accel ?? 'tcg',
    memoryMiB: o.spec.memoryMiB,
    cpus: o.spec.cpus,
    devices: templateIdentity(spec, o.platform),
  };
}

export async function warmStart(o: WarmStartOptions): Promise<WarmStartResult> {
  if (o.spec.shares.length) throw new WarmStartUnusable('folder shares cannot be hot-plugged into a restored VM', false);
  const id = templateIdentityOf(o);
  const key = templateKey(id);
  const found = findTemplate(key);
  if (found && 'problem' in found) {
    log.warn('template unusable: making a new one', { template: key, problem: found.problem });
    removeTemplate(key);
  }
  if (found && 'template' in found) {
    touchTemplate(key);
    return restore(o, key, found.template);
  }
  return create(o, key, id);
}

async function create(o: WarmStartOptions, key: string, id: TemplateIdentity): Promise<WarmStartResult> {
  const gen = newGeneration(key);
  const pair = generateEd25519(TEMPLATE_HOSTNAME);
  writeGenerationKey(gen, pair.private);
  const drive = encodeConfigDrive({
    version: 1,
    name: TEMPLATE_HOSTNAME,
    sshAuthorizedKey: pair.public.trim(),
    sshPort: o.image.sshPort,
    template: { seedDevice: SEED_DEVICE },
  });
  writeFileSync(gen.configDrive, drive, { mode: 0o600 });
  o.progress.phase('booting the appliance to make its saved state (first start with this image)');
  let t0 = Date.now();
  let launched: { ref: VmRef; forwards: PortForward[]; reach: Reachable } | undefined;
  let qmp: QmpClient | undefined;
  let commit: Promise<unknown> = Promise.resolve();
  const phases: Record<string, number> = {};
  try {
    const session = await retryStalledBoot(
      async () => {
        t0 = Date.now();
        launched = await o.launch(templateSpec(o, gen.configDrive));
        phases.launched = Date.now() - t0;
        const vm = launched.ref;
        return waitForAgent({
          target: { host: launched.reach.address, port: launched.reach.ports.ssh!, user: o.image.sshUser, privateKey: pair.private },
          timeoutMs: o.bootTimeoutMs,
          consoleLog: vm.consoleLog,
          alive: () => o.backend.isRunning(vm),
          onPhase: (p) => o.progress.phase(p),
          stallMs: STALL_MS,
        });
      },
      async () => (launched ? o.backend.stopVm(launched.ref, 1000) : undefined),
    );
    const { ref, forwards, reach } = launched!;
    const status = await session.status().finally(() => session.close());
    if (!status.awaitingConfiguration) throw new BridgeError('EIO', 'the template boot did not leave the agent waiting for configure');
    phases.agentWaiting = Date.now() - t0;
    qmp = await o.backend.qmp(ref);
    o.progress.phase('saving the VM state (template)');
    const tSave = Date.now();
    try {
      await saveState(qmp, gen.memoryFile);
      const saveMs = Date.now() - tSave;
      phases.saved = Date.now() - t0;
      // Hashed while this VM goes on as the instance; named in template.json only when complete.
      commit = commitGeneration(gen, id, saveMs).then(
        (meta) => log.info('template saved', { template: key, bytes: meta.memoryBytes, saveMs }),
        (e: unknown) => log.warn('template not kept', { template: key, error: errorMessage(e) }),
      );
    } catch (e) {
      // This VM is still fine: go on without a template.
      log.warn('could not save a template: this start goes on without one', { error: errorMessage(e) });
    }
    const done = await becomeInstance(o, ref, qmp, pair.private, reach, phases, t0);
    await commit;
    return { ref, forwards, reach, ...done, mode: 'template-created', templateKey: key, phases };
  } catch (e) {
    if (launched) await o.backend.stopVm(launched.ref, 1000).catch(() => undefined);
    removeTemplate(key);
    throw e instanceof WarmStartUnusable ? e : new WarmStartUnusable(`making the template failed: ${errorMessage(e)}`, false);
  } finally {
    qmp?.close();
  }
}

async function restore(o: WarmStartOptions, key: string, t: Template): Promise<WarmStartResult> {
  o.progress.phase('starting the appliance from its saved state');
  // Verified beside the load; nothing is attached or configured before it passes.
  const verified = verifyTemplate(t).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  const t0 = Date.now();
  let launched: { ref: VmRef; forwards: PortForward[]; reach: Reachable };
  try {
    launched = await o.launch(templateSpec(o, t.configDrive, t.memoryFile));
  } catch (e) {
    removeTemplate(key);
    throw new WarmStartUnusable(`QEMU refused the saved state: ${errorMessage(e)}`, true);
  }
  const { ref, forwards, reach } = launched;
  const phases: Record<string, number> = { launched: Date.now() - t0 };
  let qmp: QmpClient | undefined;
  try {
    try {
      qmp = await o.backend.qmp(ref);
      const state = await awaitIncoming(qmp);
      if (state !== 'paused') throw new BridgeError('EIO', `run state ${state} after loading`);
    } catch (e) {
      const alive = await o.backend.isRunning(ref);
      throw new WarmStartUnusable(`QEMU could not load the saved state${alive ? '' : ' (it exited)'}: ${errorMessage(e)}`, true);
    }
    phases.loaded = Date.now() - t0;
    const done = await becomeInstance(o, ref, qmp, t.privateKey, reach, phases, t0, verified);
    return { ref, forwards, reach, ...done, mode: 'restored', templateKey: key, phases };
  } catch (e) {
    await o.backend.stopVm(ref, 1000).catch(() => undefined);
    const err = e instanceof WarmStartUnusable ? e : new WarmStartUnusable(`the restored VM did not come up: ${errorMessage(e)}`, true);
    if (err.broken) removeTemplate(key);
    throw err;
  } finally {
    qmp?.close();
  }
}

/** cont → seed → SSH (template key, new host key pinned) → disks → configure. */
async function becomeInstance(
  o: WarmStartOptions,
  ref: VmRef,
  qmp: QmpClient,
  templateKeyPrivate: string,
  reach: Reachable,
  phases: Record<string, number>,
  t0: number,
  verified?: Promise<Error | undefined>,
): Promise<{ session: AgentSession; hostKeySha256: string }> {
  await qmp.execute('cont');
  const hostKeySha256 = await sendRestoreSeed(seedSocketPath(ref.dir));
  phases.seeded = Date.now() - t0;
  const session = await waitForAgent({
    target: { host: reach.address, port: reach.ports.ssh!, user: o.image.sshUser, privateKey: templateKeyPrivate, hostKeySha256 },
    timeoutMs: 60_000,
    consoleLog: ref.consoleLog,
    alive: () => o.backend.isRunning(ref),
  });
  phases.ssh = Date.now() - t0;
  try {
    const bad = await verified;
    if (bad) throw new WarmStartUnusable(errorMessage(bad), true);
    await hotAddDisks(qmp, o.disks);
    o.progress.phase('configuring the instance');
    await session.configure({
      agent: o.instance.agent,
      name: o.instance.name,
      sshAuthorizedKey: o.instance.publicKey,
      timeMs: Date.now(),
      entropy: randomBytes(32).toString('hex'),
    });
    phases.configured = Date.now() - t0;
    return { session, hostKeySha256 };
  } catch (e) {
    session.close();
    throw e;
  }
}
