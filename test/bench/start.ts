/**
 * `npm run bench -- start [runs]`: wall time of `bridge start` (the README's main command: demo ext4
 * disk over SMB) until the first smbclient listing succeeds, and of `bridge stop`, under QEMU/TCG.
 * Peer, same run: libguestfs booting its appliance and reading a file from an ext4 disk
 * (`guestfish --ro -a IMG -m /dev/sda cat /README.txt`, LIBGUESTFS_BACKEND_SETTINGS=force_tcg) when
 * libguestfs-tools is installed. Goals: start ≤ 12 s (≤ 8 s of it the boot), stop ≤ 3 s.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { bridge, findManifest, makeEnv, run as exec } from '../wrapper/e2e-helpers.js';

interface StartJson {
  user: string;
  endpoints: { protocol: string; address: string; port: number; path: string }[];
  seconds: { image: number; boot: number; total: number };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const fmt = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(1)} s` : '-');

export async function run(args: string[]): Promise<void> {
  const runs = Number(args[0] ?? 3);
  const manifest = findManifest();
  if (!manifest) throw new Error('no appliance image: build it first (sudo bash image-build/build.sh) or set BRIDGE_IMAGE_MANIFEST');
  const env: NodeJS.ProcessEnv = { ...makeEnv(manifest), BRIDGE_PASSWORD: 'bench-password-1', PASSWD: 'bench-password-1' };
  const root = env.E2E_ROOT ?? '';
  const starts: number[] = [];
  const boots: number[] = [];
  const stops: number[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      const name = `bench-${process.pid}-${i}`;
      const t0 = performance.now();
      const r = await bridge(['start', '--name', name, '--no-mount', '--json', '--boot-timeout', '300'], env, 400_000);
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
      starts.push((performance.now() - t0) / 1000);
      boots.push(res.seconds.boot);
      const t1 = performance.now();
      const s = await bridge(['stop', name], env, 120_000);
      if (s.code !== 0) throw new Error(`bridge stop failed:\n${s.stderr}`);
      stops.push((performance.now() - t1) / 1000);
      process.stderr.write(`run ${i + 1}/${runs}: start→smb listing ${fmt(starts.at(-1)!)} (boot ${fmt(boots.at(-1)!)}), stop ${fmt(stops.at(-1)!)}\n`);
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
    const lines = [
      `bridge start (demo disk, SMB) → first smbclient listing: ${fmt(median(starts))} median of ${runs} [${starts.map(fmt).join(', ')}]  goal ≤ 12 s`,
      `  of which boot → agent answering:                      ${fmt(median(boots))}  goal ≤ 8 s`,
      `bridge stop:                                            ${fmt(median(stops))} median [${stops.map(fmt).join(', ')}]  goal ≤ 3 s`,
      `peer libguestfs (boot appliance + read a file):         ${peer}`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    await bridge(['stop', '--all', '--timeout', '3'], env, 120_000).catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
  }
}
