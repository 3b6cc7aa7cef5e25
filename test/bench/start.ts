/**
 * `npm run bench -- start [runs]`: wall time of `bridge start` (the README's main command: demo ext4
 * disk over SMB) until the first smbclient listing succeeds, and of `bridge stop`, under QEMU/TCG:
 * warm (restored from the saved template; the first start makes it) and cold (`--no-snapshot`),
 * alternating, from the same run. Runs the built CLI (dist/, what `npx bridge` runs): npm run build first.
 * Peer, same run: libguestfs booting its appliance and reading a file from an ext4 disk
 * (`guestfish --ro -a IMG -m /dev/sda cat /README.txt`, LIBGUESTFS_BACKEND_SETTINGS=force_tcg) when
 * libguestfs-tools is installed. Goals: start ≤ 12 s (≤ 8 s of it the boot), stop ≤ 3 s.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { bridgeBuilt as bridge, findManifest, makeEnv, run as exec } from '../wrapper/e2e-helpers.js';

interface StartJson {
  user: string;
  endpoints: { protocol: string; address: string; port: number; path: string }[];
  seconds: { image: number; boot: number; total: number };
  boot: string;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const fmt = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(1)} s` : '-');

interface Run {
  start: number;
  boot: number;
  stop: number;
  kind: string;
}

/** One `bridge start` (demo disk over SMB) → first smbclient listing, then `bridge stop`. */
async function startStop(env: NodeJS.ProcessEnv, name: string, extra: string[]): Promise<Run> {
  const t0 = performance.now();
  const r = await bridge(['start', '--name', name, '--no-mount', '--json', '--boot-timeout', '300', ...extra], env, 400_000);
  if (r.code !== 0) throw new Error(`bridge start failed:\n${r.stderr}`);
  const res = JSON.parse(r.stdout) as StartJson;
  const smb = res.endpoints.find((e) => e.protocol === 'smb')!;
  // Poll smbclient until the first listing succeeds (normally the first try: start waits for the export).
  let tries = 0;
  for (;;) {
    const ls = await exec('smbclient', [`//${smb.address}/${smb.path}`, '-p', String(smb.port), '-U', res.user, '-c', 'ls'], env, 30_000);
    if (ls.code === 0 && ls.stdout.includes('README.txt')) break;
    if (/LOGON_FAILURE|ACCESS_DENIED/.test(ls.stdout + ls.stderr)) throw new Error(`smbclient was refused: ${ls.stdout}${ls.stderr}`);
    if (performance.now() - t0 > 400_000 || ++tries > 300) throw new Error(`smbclient never listed README.txt: ${ls.stdout}${ls.stderr}`);
    await new Promise((ok) => setTimeout(ok, 100));
  }
  const start = (performance.now() - t0) / 1000;
  const t1 = performance.now();
  const s = await bridge(['stop', name], env, 120_000);
  if (s.code !== 0) throw new Error(`bridge stop failed:\n${s.stderr}`);
  return { start, boot: res.seconds.boot, stop: (performance.now() - t1) / 1000, kind: res.boot };
}

export async function run(args: string[]): Promise<void> {
  const runs = Number(args[0] ?? 3);
  const manifest = findManifest();
  if (!manifest) throw new Error('no appliance image: build it first (sudo bash image-build/build.sh) or set BRIDGE_IMAGE_MANIFEST');
  const env: NodeJS.ProcessEnv = { ...makeEnv(manifest), BRIDGE_PASSWORD: 'bench-password-1', PASSWD: 'bench-password-1' };
  const root = env.E2E_ROOT ?? '';
  const cold: Run[] = [];
  const warm: Run[] = [];
  const load: number[] = [loadavg()[0]!];
  try {
    // The first start with this image boots and saves the template (its own state dir: always fresh).
    const first = await startStop(env, `bench-${process.pid}-t`, []);
    if (first.kind !== 'template-created') throw new Error(`the first start was ${first.kind}, expected template-created`);
    process.stderr.write(`first start (boots, saves the template): start→smb listing ${fmt(first.start)}, stop ${fmt(first.stop)}\n`);
    for (let i = 0; i < runs; i++) {
      cold.push(await startStop(env, `bench-${process.pid}-c${i}`, ['--no-snapshot']));
      warm.push(await startStop(env, `bench-${process.pid}-w${i}`, []));
      if (warm.at(-1)!.kind !== 'restored') throw new Error(`warm run ${i + 1} was ${warm.at(-1)!.kind}`);
      load.push(loadavg()[0]!);
      process.stderr.write(
        `run ${i + 1}/${runs}: cold ${fmt(cold.at(-1)!.start)} (stop ${fmt(cold.at(-1)!.stop)}), warm ${fmt(warm.at(-1)!.start)} (stop ${fmt(warm.at(-1)!.stop)})\n`,
      );
    }
    let peer = 'not installed (apt-get install libguestfs-tools linux-image-cloud-amd64); ../shared/ENVIRONMENT.md measured a 12.4 s median here';
    const gf = await exec('sh', ['-c', 'command -v guestfish'], env);
    if (gf.code === 0) {
      const tree = join(root, 'peer-tree');
      mkdirSync(tree, { recursive: true });
      writeFileSync(join(tree, 'README.txt'), 'peer\n');
      const img = join(root, 'peer.img');
      await exec('mkfs.ext4', ['-q', '-F', '-d', tree, img, '64M']);
      const times: number[] = [];
      for (let i = 0; i < runs; i++) {
        const t = performance.now();
        const r = await exec(
          'guestfish',
          ['--ro', '-a', img, '-m', '/dev/sda', 'cat', '/README.txt'],
          { ...env, LIBGUESTFS_BACKEND: 'direct', LIBGUESTFS_BACKEND_SETTINGS: 'force_tcg' },
          300_000,
        );
        if (r.code !== 0) throw new Error(`guestfish failed: ${r.stderr}`);
        times.push((performance.now() - t) / 1000);
      }
      peer = `${fmt(median(times))} median of ${runs} (guestfish --ro -a IMG -m /dev/sda cat /README.txt, TCG)`;
    }
    const row = (rs: Run[], k: keyof Omit<Run, 'kind'>): string => `${fmt(median(rs.map((r) => r[k])))} [${rs.map((r) => fmt(r[k])).join(', ')}]`;
    const lines = [
      `bridge start (demo disk, SMB) → first smbclient listing, median of ${runs} [each run]:`,
      `  warm (restored from the template):   ${row(warm, 'start')}  goal ≤ 12 s`,
      `    of which boot → agent configured:  ${row(warm, 'boot')}  goal ≤ 8 s`,
      `  cold (--no-snapshot):                ${row(cold, 'start')}`,
      `    of which boot → agent answering:   ${row(cold, 'boot')}`,
      `  first start (boots + saves the template, once per image): ${fmt(first.start)}`,
      `bridge stop:  warm ${row(warm, 'stop')}, cold ${row(cold, 'stop')}  goal ≤ 3 s`,
      `load average (1 min) during the runs: ${load.map((l) => l.toFixed(1)).join(' → ')}`,
      `peer libguestfs (boot appliance + read a file): ${peer}`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    await bridge(['stop', '--all', '--timeout', '3'], env, 120_000).catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
  }
}
