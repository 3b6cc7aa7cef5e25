// eslint-disable-next-line @typescript-eslint/triple-slash-reference -- the test project does not include the appliance's ambient fuse-native types
/// <reference path="../../appliance/src/fuse/fuse-native.d.ts" />
/**
 * `npm run bench -- exports [--size 1G] [--runs 3]`: throughput of the agent's exports beside the
 * plain path, in the same run:
 *   SMB:   smbclient get of one file from Samba on a plain directory, and from Samba on ext4
 *          loop-mounted from the chunked store's FUSE file (store → mount stage → SMB share).
 *   iSCSI: qemu-img convert of the FAT32 volume synthesized from that directory (tree → FAT32 →
 *          FUSE file → tgtd), and of a plain-file LUN holding the same bytes on a tgtd of its own.
 * Warm figures are the median of --runs after one warm-up read; the cold figure is the first read.
 * Goal: ≥ 0.8× the plain path.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseSize, formatSize } from '../../shared/src/size.js';
import { BlockFile } from '../../appliance/src/fuse/block-file.js';
import { createStore, openStore } from '../../appliance/src/store/index.js';
import { freeControlPort } from '../../appliance/src/exports/tgt.js';
import { freePort } from '../helpers/ports.js';
import { AgentProcess, sh } from '../daemon/agent-process.js';

function arg(args: string[], name: string, fallback: string): string {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1]! : fallback;
}

async function must(cmd: string, a: string[]): Promise<string> {
  const r = await sh(cmd, a, undefined, 1_800_000);
  if (r.code !== 0) throw new Error(`${cmd} ${a.join(' ')}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

/** Seconds taken by `fn`. */
async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return (performance.now() - t) / 1000;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const mbps = (bytes: number, s: number): string => `${(bytes / s / 1e6).toFixed(0)} MB/s`;

export async function run(args: string[]): Promise<void> {
  const size = parseSize(arg(args, '--size', '1G'));
  const runs = Number(arg(args, '--runs', '3'));
  const dir = AgentProcess.tempDir('bridge-bench-exports-');
  const say = (s: string): boolean => process.stdout.write(s + '\n');
  let agent: AgentProcess | undefined;
  let tgtdPid: number | undefined;
  try {
    say(`preparing ${formatSize(size)} of random data in a directory and in ext4 on a chunked store ...`);
    mkdirSync(join(dir, 'tree'));
    mkdirSync(join(dir, 'local'));
    const file = join(dir, 'tree', 'big.bin');
    await must('sh', ['-c', `head -c ${size} /dev/urandom > ${file}`]);
    // ext4 on the store, filled once through its FUSE file.
    const volSize = Math.max(2 * size, 256 * 1024 * 1024);
    const store = `dir:${join(dir, 'vol')}`;
    mkdirSync(join(dir, 'vol'));
    await createStore({ store, size: volSize, passphrase: 'bench', kdf: { N: 1024, r: 8, p: 1 } });
    const dev = await openStore({ store, passphrase: 'bench', cacheDir: join(dir, 'cache-fill'), cacheSize: 512 * 1024 * 1024 });
    const bf = await BlockFile.expose(dev, join(dir, 'fill'));
    await must('mkfs.ext4', ['-q', '-F', bf.path]);
    mkdirSync(join(dir, 'fillmnt'));
    await must('mount', ['-o', 'loop', bf.path, join(dir, 'fillmnt')]);
    await must('cp', [file, join(dir, 'fillmnt', 'big.bin')]);
    await must('umount', [join(dir, 'fillmnt')]);
    await bf.close();

    const smbPort = await freePort();
    const iscsiPort = await freePort();
    agent = new AgentProcess(
      dir,
      {
        version: 1,
        runtimeDir: join(dir, 'run'),
        log: { level: 'warn' },
        listen: { address: '127.0.0.1', smbPort, iscsiPort },
        users: [{ name: 'bridgebench', password: { env: 'BENCH_PW' } }],
        sources: [
          { kind: 'directory', name: 'plain', path: join(dir, 'tree'), readOnly: true },
          {
            kind: 'store',
            name: 'vol',
            store,
            passphrase: { env: 'BENCH_PW' },
            cache: { dir: join(dir, 'cache'), size: Math.max(size + 256 * 1024 * 1024, 512 * 1024 * 1024) },
          },
        ],
        stages: [
          { kind: 'mount', name: 'volfs', from: 'vol' },
          { kind: 'fat32', name: 'fat', from: 'plain' },
        ],
        exports: [
          { kind: 'smb', name: 'plain', from: 'plain', users: ['bridgebench'], readOnly: true },
          { kind: 'smb', name: 'store', from: 'volfs', users: ['bridgebench'], readOnly: true },
          { kind: 'iscsi', name: 'fat', from: 'fat', chap: { user: 'bench', secret: { env: 'BENCH_CHAP' } } },
        ],
      },
      { BENCH_PW: 'bench', BENCH_CHAP: 'bench-chap-secret' },
    );
    await agent.start();
    const st = await agent.status();
    const down = st.exports.filter((e) => e.health !== 'ok');
    if (down.length) throw new Error(`exports not ok: ${JSON.stringify(down)}`);

    const get = (share: string): Promise<number> =>
      timed(() =>
        must('smbclient', [`//127.0.0.1/${share}`, '-p', String(smbPort), '-U', 'bridgebench%bench', '-c', `lcd ${join(dir, 'local')}; get big.bin out.bin`]),
      );
    const smb: Record<string, { cold: number; warm: number[] }> = {};
    for (const share of ['plain', 'store']) {
      smb[share] = { cold: await get(share), warm: [] };
      for (let i = 0; i < runs; i++) smb[share].warm.push(await get(share));
    }

    // iSCSI: the FAT32 volume through our FUSE file, and the same bytes from a plain-file LUN.
    const fatUrl = `iscsi://bench%bench-chap-secret@127.0.0.1:${iscsiPort}/iqn.2026-11.org.bridge:fat/1`;
    const out = join(dir, 'local', 'lun.raw');
    const convert = (url: string): Promise<number> => timed(() => must('qemu-img', ['convert', '-O', 'raw', '-t', 'none', url, out]));
    const iscsi: Record<string, { cold: number; warm: number[] }> = { fat: { cold: await convert(fatUrl), warm: [] } };
    const lunBytes = statSync(out).size;
    const plainImg = join(dir, 'plain-lun.raw');
    await must('cp', ['--sparse=never', out, plainImg]);
    const plainPort = await freePort();
    const control = freeControlPort();
    const tgtd = spawn('tgtd', ['-f', '-C', String(control), '--iscsi', `portal=127.0.0.1:${plainPort}`], { stdio: 'ignore', detached: true });
    tgtdPid = tgtd.pid;
    const adm = (...a: string[]): Promise<string> => must('tgtadm', ['-C', String(control), '--lld', 'iscsi', ...a]);
    for (let i = 0; i < 50; i++) if ((await sh('tgtadm', ['-C', String(control), '--lld', 'iscsi', '--mode', 'system', '--op', 'show'])).code === 0) break;
    await adm('--mode', 'target', '--op', 'new', '--tid', '1', '-T', 'iqn.2026-11.org.bench:plain');
    await adm('--mode', 'logicalunit', '--op', 'new', '--tid', '1', '--lun', '1', '-b', plainImg);
    await adm('--mode', 'target', '--op', 'bind', '--tid', '1', '-I', 'ALL');
    const plainUrl = `iscsi://127.0.0.1:${plainPort}/iqn.2026-11.org.bench:plain/1`;
    iscsi['plain'] = { cold: await convert(plainUrl), warm: [] };
    for (let i = 0; i < runs; i++) {
      iscsi['fat']!.warm.push(await convert(fatUrl));
      iscsi['plain']!.warm.push(await convert(plainUrl));
    }
    await adm('--mode', 'target', '--op', 'delete', '--force', '--tid', '1');
    await adm('--mode', 'system', '--op', 'delete');
    tgtd.kill('SIGTERM');
    tgtdPid = undefined;

    const row = (label: string, bytes: number, r: { cold: number; warm: number[] }, peer?: { warm: number[] }): string =>
      `${label.padEnd(46)} cold ${mbps(bytes, r.cold).padStart(10)}   warm ${mbps(bytes, median(r.warm)).padStart(10)}` +
      (peer ? `   ${(median(peer.warm) / median(r.warm)).toFixed(2)}× plain` : '');
    say('');
    say(`exports benchmark: ${formatSize(size)} file, ${runs} warm runs (median), this machine, same run`);
    say(row('SMB get, Samba on a plain directory', size, smb['plain']!));
    say(row('SMB get, Samba on ext4 on chunked store (FUSE)', size, smb['store']!, smb['plain']));
    say(row('iSCSI qemu-img convert, plain-file LUN', lunBytes, iscsi['plain']!));
    say(row('iSCSI qemu-img convert, FAT32 volume (FUSE)', lunBytes, iscsi['fat']!, iscsi['plain']));
  } finally {
    if (tgtdPid) process.kill(tgtdPid, 'SIGKILL');
    await agent?.stop();
    rmSync(dir, { recursive: true, force: true });
    await sh('userdel', ['bridgebench']);
  }
}
