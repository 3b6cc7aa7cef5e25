/**
 * `npm run bench -- boot [--runs N] [--cpus N] [--no-compile] [--only cold|warm]`: wall time from
 * launching QEMU (TCG) to the first successful smbclient listing of an ext4 disk exported by the
 * appliance, cold (boot from the kernel) and warm (restored from a saved template, warm-start.ts),
 * with the phases in between, and the image's compressed size; beside the peers' figures. Both use the
 * host wrapper's QEMU backend and command line; the SMB password is pushed over the SSH-forwarded
 * control socket as soon as the agent answers, as `bridge start` does.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { encodeConfigDrive } from '../../shared/src/config-drive.js';
import type { AgentConfigInput } from '../../shared/src/config.js';
import { AgentSession, waitForAgent, waitForExports } from '../../wrapper/src/agent-client.js';
import type { PortForward, Reachable, VmDisk, VmRef, VmSpec } from '../../wrapper/src/hypervisors/backend.js';
import { QemuBackend } from '../../wrapper/src/hypervisors/qemu.js';
import { generateEd25519 } from '../../wrapper/src/keys.js';
import { allocateForwards } from '../../wrapper/src/ports.js';
import { silentProgress } from '../../wrapper/src/progress.js';
import { hostRunner } from '../../wrapper/src/runner.js';
import { warmStart } from '../../wrapper/src/warm-start.js';
import { buildImage } from '../image/appliance-vm.js';

const exec = promisify(execFile);
const PASSWORD = 'bench-password-1';

function arg(args: string[], name: string, fallback: string): string {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1]! : fallback;
}

const AGENT: AgentConfigInput = {
  version: 1,
  listen: { address: '0.0.0.0' },
  users: [{ name: 'alice', password: { pushed: 'alice-password' } }],
  sources: [{ kind: 'disk', name: 'data', path: 'serial:bridge-src0', partition: 'whole', fstype: 'ext4', readOnly: true }],
  exports: [{ kind: 'smb', name: 'data', from: 'data', users: ['alice'], readOnly: true }],
};

/** Guest uptime (s) of each bridge-init log line, e.g. "ready" → 4.2. */
function initMarks(console: string): Record<string, number> {
  const marks: Record<string, number> = {};
  for (const m of console.matchAll(/bridge-init: \[([\d.]+)\] (\w+)/g)) marks[m[2]!] ??= Number(m[1]);
  return marks;
}

/** As `bridge start` does: the export is up when the agent says so; then smbclient lists it. */
async function smbListing(session: AgentSession, port: number, row: Row, t: () => number): Promise<void> {
  await waitForExports(session, 300_000);
  row.exportUp = t();
  const deadline = Date.now() + 300_000;
  for (;;) {
    const out = await exec('smbclient', ['//127.0.0.1/data', '-p', String(port), '-U', `alice%${PASSWORD}`, '-c', 'ls']).then(
      (r) => r.stdout,
      () => '',
    );
    if (out.includes('hello.txt')) return;
    if (Date.now() > deadline) throw new Error('smbclient never listed hello.txt');
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface Bench {
  backend: QemuBackend;
  image: Awaited<ReturnType<typeof buildImage>>;
  work: string;
  cpus: number;
  data: VmDisk;
}

function baseSpec(b: Bench, name: string): VmSpec {
  const m = b.image.manifest;
  const dir = join(b.work, name);
  mkdirSync(dir, { recursive: true });
  return {
    name,
    dir,
    bootDisk: { path: join(b.image.dir, m.disk), format: 'raw' },
    kernel: { kernel: join(b.image.dir, m.kernel), initrd: join(b.image.dir, m.initrd), cmdline: m.cmdline },
    memoryMiB: 1024,
    cpus: b.cpus,
    disks: [],
    shares: [],
    forwards: [],
    accel: 'tcg',
  };
}

async function launcher(b: Bench, spec: VmSpec): Promise<{ ref: VmRef; forwards: PortForward[]; reach: Reachable }> {
  const forwards = await allocateForwards(
    [
      { name: 'ssh', guestPort: 22 },
      { name: 'smb', guestPort: 445 },
    ],
    new Set(),
  );
  const ref = await b.backend.startVm(await b.backend.createVm(spec), { ...spec, forwards });
  return { ref, forwards, reach: await b.backend.reachable(ref, forwards) };
}

async function stop(b: Bench, ref: VmRef, session?: AgentSession): Promise<void> {
  await session?.powerOff().catch(() => undefined);
  session?.close();
  await b.backend.stopVm(ref, 20_000);
  await b.backend.deleteVm(ref);
}

type Row = Record<string, number>;

async function coldRun(b: Bench, i: number): Promise<Row> {
  const spec = baseSpec(b, `cold-${i}`);
  const key = generateEd25519('bench');
  const drive = join(spec.dir, 'config.img');
  writeFileSync(drive, encodeConfigDrive({ version: 1, name: 'bench', sshAuthorizedKey: key.public.trim(), agent: AGENT }));
  const t0 = performance.now();
  const t = (): number => (performance.now() - t0) / 1000;
  const { ref, reach } = await launcher(b, { ...spec, disks: [{ path: drive, format: 'raw', serial: 'bridge-config', readOnly: true }, b.data] });
  let session: AgentSession | undefined;
  try {
    const row: Row = { launched: t() };
    let ssh = NaN;
    session = await waitForAgent({
      target: { host: reach.address, port: reach.ports.ssh!, user: 'root', privateKey: key.private },
      timeoutMs: 300_000,
      consoleLog: ref.consoleLog,
      alive: () => b.backend.isRunning(ref),
      onPhase: (p) => (p === 'waiting for the agent' ? (ssh = t()) : undefined),
    });
    row.ssh = ssh;
    row.agent = t();
    await session.putSecret('alice-password', PASSWORD);
    row.secret = t();
    await smbListing(session, reach.ports.smb!, row, t);
    row.smb = t();
    const marks = initMarks(readFileSync(ref.consoleLog, 'utf8'));
    return { initStarted: marks.start ?? NaN, initReady: marks.ready ?? NaN, ...row };
  } finally {
    await stop(b, ref, session);
  }
}

async function warmRun(b: Bench, i: number): Promise<{ row: Row; mode: string }> {
  const spec = baseSpec(b, `warm-${i}`);
  const key = generateEd25519('bench');
  const t0 = performance.now();
  const t = (): number => (performance.now() - t0) / 1000;
  const w = await warmStart({
    backend: b.backend,
    spec,
    disks: [b.data],
    image: { hash: b.image.manifest.hash, version: b.image.manifest.version, sshUser: 'root', sshPort: 22 },
    qemuVersion: (await b.backend.detect()).version ?? 'unknown',
    platform: 'linux',
    launch: (s) => launcher(b, s),
    instance: { name: 'bench', publicKey: key.public.trim(), agent: AGENT },
    bootTimeoutMs: 300_000,
    progress: silentProgress,
  });
  try {
    const row: Row = Object.fromEntries(Object.entries(w.phases).map(([k, v]) => [k, v / 1000]));
    await w.session.putSecret('alice-password', PASSWORD);
    row.secret = t();
    await smbListing(w.session, w.reach.ports.smb!, row, t);
    row.smb = t();
    return { row, mode: w.mode };
  } finally {
    await stop(b, w.ref, w.session);
  }
}

const median = (xs: number[]): number => {
  const v = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
};
const fmt = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(1)} s` : '   -  ');

export async function run(args: string[]): Promise<void> {
  const runs = Number(arg(args, '--runs', '3'));
  const cpus = Number(arg(args, '--cpus', '2'));
  const only = arg(args, '--only', 'both');
  const image = await buildImage(args.includes('--no-compile') ? ['--no-compile'] : []);
  const m = image.manifest;
  process.stdout.write(
    `image ${m.version}: build/cache check ${(image.buildMs / 1000).toFixed(1)} s, compressed ${(m.compressedSize / 1e6).toFixed(0)} MB (zstd -3), disk ${(m.sizes.disk! / 1e6).toFixed(0)} MB\n`,
  );
  const work = mkdtempSync(join(tmpdir(), 'bridge-bench-boot-'));
  const stateBefore = process.env.BRIDGE_STATE_DIR;
  process.env.BRIDGE_STATE_DIR = join(work, 'state'); // the bench's own templates
  const load: number[][] = [loadavg()];
  try {
    mkdirSync(join(work, 'tree'));
    writeFileSync(join(work, 'tree', 'hello.txt'), 'hello\n');
    await exec('mkfs.ext4', ['-q', '-F', '-d', join(work, 'tree'), join(work, 'data.ext4'), '16M']);
    const b: Bench = {
      backend: new QemuBackend({ runner: hostRunner, accel: 'tcg' }),
      image,
      work,
      cpus,
      data: { path: join(work, 'data.ext4'), format: 'raw', serial: 'bridge-src0', readOnly: true },
    };
    const cold: Row[] = [];
    const warm: Row[] = [];
    let made: Row | undefined;
    for (let i = 0; i < runs; i++) {
      if (only !== 'warm') {
        cold.push(await coldRun(b, i));
        process.stderr.write(`cold run ${i + 1}: ${fmt(cold.at(-1)!.smb!)}\n`);
      }
      if (only !== 'cold') {
        // The first warm run makes the template (a boot + save); the others restore it.
        if (!made) {
          made = (await warmRun(b, 99)).row;
          process.stderr.write(`template made: ${fmt(made.saved!)} (boot ${fmt(made.agentWaiting!)}), that start ${fmt(made.smb!)}\n`);
        }
        const r = await warmRun(b, i);
        if (r.mode !== 'restored') throw new Error(`warm run ${i + 1} was ${r.mode}`);
        warm.push(r.row);
        process.stderr.write(`warm run ${i + 1}: ${fmt(r.row.smb!)}\n`);
      }
      load.push(loadavg());
    }
    // The peer, same run, when libguestfs-tools is installed (it is not by default here).
    const peer: number[] = [];
    if (hostRunner.which('guestfish')) {
      for (let i = 0; i < runs; i++) {
        const t = performance.now();
        await exec('guestfish', ['-a', '/dev/null', 'run'], {
          env: { ...process.env, LIBGUESTFS_BACKEND: 'direct', LIBGUESTFS_BACKEND_SETTINGS: 'force_tcg' },
        });
        peer.push((performance.now() - t) / 1000);
      }
    }
    const col = (rows: Row[], k: string): string =>
      rows.length ? `${fmt(median(rows.map((r) => r[k]!)))} [${rows.map((r) => fmt(r[k]!).trim()).join(', ')}]` : '-';
    const lines = [
      `boot under QEMU/TCG, ${cpus} vCPU, 1 GiB, median of ${runs} [each run]; wall from launching QEMU:`,
      '',
      'cold boot (kernel + initramfs + bridge-init + agent):',
      `  bridge-init started (guest uptime)      ${col(cold, 'initStarted')}`,
      `  bridge-init ready   (guest uptime)      ${col(cold, 'initReady')}`,
      `  SSH login works                         ${col(cold, 'ssh')}`,
      `  agent answers (control socket)          ${col(cold, 'agent')}`,
      `  SMB password pushed                     ${col(cold, 'secret')}`,
      `  agent: export up                        ${col(cold, 'exportUp')}`,
      `  first smbclient listing                 ${col(cold, 'smb')}    goal <= 8 s`,
      '',
      'warm start (restored from the saved template):',
      `  state loaded (QMP: paused)              ${col(warm, 'loaded')}`,
      `  seed answered (RNG, clock, host key)    ${col(warm, 'seeded')}`,
      `  SSH + agent answer                      ${col(warm, 'ssh')}`,
      `  configured (disk hot-plugged)           ${col(warm, 'configured')}`,
      `  SMB password pushed                     ${col(warm, 'secret')}`,
      `  agent: export up                        ${col(warm, 'exportUp')}`,
      `  first smbclient listing                 ${col(warm, 'smb')}    goal <= 8 s`,
      ...(made
        ? [
            `  (once per image: template boot ${fmt(made.agentWaiting!)}, save ${fmt(made.saved! - made.agentWaiting!)}, that start's listing ${fmt(made.smb!)})`,
          ]
        : []),
      '',
      `compressed image                          ${(m.compressedSize / 1e6).toFixed(0)} MB    goal <= 200 MB`,
      `load average (1 min) during the runs      ${load.map((l) => l[0]!.toFixed(1)).join(' → ')}`,
      '',
      peer.length
        ? `peer, same run: guestfish -a /dev/null run (TCG)  ${fmt(median(peer))} [${peer.map((x) => fmt(x).trim()).join(', ')}]`
        : 'peers (published / measured here before; libguestfs-tools is not installed, so not rerun):',
      '  libguestfs appliance     "< 6 s" (KVM, published); guestfish -a /dev/null run 10.7 s median here under TCG (ENVIRONMENT.md)',
      '  linsk                    ~23 s to ready (user log)',
      '  busybox initramfs        reaches init in ~2.5 s here under TCG (ENVIRONMENT.md)',
      '',
    ];
    process.stdout.write(lines.join('\n'));
  } finally {
    if (stateBefore === undefined) delete process.env.BRIDGE_STATE_DIR;
    else process.env.BRIDGE_STATE_DIR = stateBefore;
    rmSync(work, { recursive: true, force: true });
  }
}
