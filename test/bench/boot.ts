/**
 * `npm run bench -- boot [--runs N] [--secret-via socket|cli] [--cpus N] [--no-compile]`: wall time from launching
 * QEMU (TCG) to the first successful smbclient listing of an ext4 disk exported by the appliance, with
 * the phases in between, and the image's compressed size; beside the published figures of peers.
 * The SMB password is pushed as soon as the agent's control socket exists: over an SSH-forwarded
 * control socket (default, what the host wrapper should do) or with `bridge-agent secret put` (cli).
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { bootAppliance, buildImage, controlOverSsh, sshExec, type ApplianceVm } from '../image/appliance-vm.js';

const exec = promisify(execFile);
const PASSWORD = 'bench-password-1';

function arg(args: string[], name: string, fallback: string): string {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1]! : fallback;
}

async function until<T>(what: string, vm: ApplianceVm, fn: () => Promise<T | undefined>, timeoutMs = 300_000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what}: not reached in ${timeoutMs} ms; console:\n${vm.console().split('\n').slice(-20).join('\n')}`);
}

/** Guest uptime (s) of each bridge-init log line, e.g. "ready" → 4.2. */
function initMarks(console: string): Record<string, number> {
  const marks: Record<string, number> = {};
  for (const m of console.matchAll(/bridge-init: \[([\d.]+)\] (\w+)/g)) marks[m[2]!] ??= Number(m[1]);
  return marks;
}

export async function run(args: string[]): Promise<void> {
  const runs = Number(arg(args, '--runs', '1'));
  const via = arg(args, '--secret-via', 'socket');
  const cpus = Number(arg(args, '--cpus', '2'));
  const image = await buildImage(args.includes('--no-compile') ? ['--no-compile'] : []);
  const m = image.manifest;
  process.stdout.write(
    `image ${m.version}: build/cache check ${(image.buildMs / 1000).toFixed(1)} s, compressed ${(m.compressedSize / 1e6).toFixed(0)} MB (zstd -3), disk ${(m.sizes.disk! / 1e6).toFixed(0)} MB\n`,
  );
  const work = mkdtempSync(join(tmpdir(), 'bridge-bench-boot-'));
  try {
    mkdirSync(join(work, 'tree'));
    writeFileSync(join(work, 'tree', 'hello.txt'), 'hello\n');
    await exec('mkfs.ext4', ['-q', '-F', '-d', join(work, 'tree'), join(work, 'data.ext4'), '16M']);
    const rows: Array<Record<string, number>> = [];
    for (let i = 0; i < runs; i++) {
      const vm = await bootAppliance(image, {
        cpus,
        disks: [join(work, 'data.ext4')],
        forward: [445],
        agent: {
          version: 1,
          listen: { address: '0.0.0.0' },
          users: [{ name: 'alice', password: { pushed: 'alice-password' } }],
          sources: [{ kind: 'disk', name: 'data', path: 'serial:bridge-src0', partition: 'whole', fstype: 'ext4', readOnly: true }],
          exports: [{ kind: 'smb', name: 'data', from: 'data', users: ['alice'], readOnly: true }],
        },
      });
      try {
        const t = (): number => (performance.now() - vm.launchedAt) / 1000;
        await until('ssh', vm, async () => ((await sshExec(vm, 'true', 5000)).code === 0 ? true : undefined));
        const ssh = t();
        await until('control socket', vm, async () => ((await sshExec(vm, 'test -S /run/bridge/control.sock', 5000)).code === 0 ? true : undefined));
        const agent = t();
        if (via === 'cli') {
          const r = await sshExec(vm, 'bridge-agent secret put alice-password', 120_000, { privateKey: vm.privateKey }, PASSWORD);
          if (r.code !== 0) throw new Error(`secret put: ${r.stderr}`);
        } else {
          await controlOverSsh(vm, { method: 'putSecret', params: { name: 'alice-password', value: PASSWORD } });
        }
        const secret = t();
        const port = String(vm.ports.get(445));
        await until('smb listing', vm, async () => {
          const { stdout } = await exec('smbclient', ['//127.0.0.1/data', '-p', port, '-U', `alice%${PASSWORD}`, '-c', 'ls']);
          return stdout.includes('hello.txt') ? true : undefined;
        });
        const smb = t();
        const marks = initMarks(vm.console());
        rows.push({ initStarted: marks.start ?? NaN, initReady: marks.ready ?? NaN, ssh, agent, secret, smb });
      } finally {
        await vm.close();
      }
    }
    const median = (k: string): number => {
      const v = rows.map((r) => r[k]!).sort((a, b) => a - b);
      return v[Math.floor(v.length / 2)]!;
    };
    const f = (k: string): string => `${median(k).toFixed(1)} s`;
    process.stdout.write(
      [
        `boot under QEMU/TCG, ${cpus} vCPU, median of ${runs} (secret pushed via ${via}):`,
        `  guest init started (guest uptime)      ${f('initStarted')}`,
        `  bridge-init ready  (guest uptime)      ${f('initReady')}`,
        `  SSH login works    (host wall)         ${f('ssh')}`,
        `  agent control socket                   ${f('agent')}`,
        `  SMB password pushed                    ${f('secret')}`,
        `  first smbclient listing                ${f('smb')}     goal <= 8 s`,
        `  compressed image                       ${(m.compressedSize / 1e6).toFixed(0)} MB   goal <= 200 MB`,
        '',
        'peers (published / measured here, not rerun):',
        '  libguestfs appliance     "< 6 s" (KVM, published); guestfish -a /dev/null run 10.7 s median here under TCG (ENVIRONMENT.md)',
        '  linsk                    ~23 s to ready (user log)',
        '  busybox initramfs        reaches init in ~2.5 s here under TCG (ENVIRONMENT.md)',
        '',
      ].join('\n'),
    );
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
