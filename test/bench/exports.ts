// eslint-disable-next-line @typescript-eslint/triple-slash-reference -- the test project does not include the appliance's ambient fuse-native types
/// <reference path="../../appliance/src/fuse/fuse-native.d.ts" />
/**
 * `npm run bench -- exports [--size 1G] [--runs 3]`: throughput of the agent's exports beside the
 * plain path, in the same run:
 *   SMB:   smbclient get of one file from Samba on a plain directory, and from Samba on ext4
 *          loop-mounted from the chunked store's FUSE file (store → mount stage → SMB share).
 *   iSCSI: qemu-img convert of the FAT32 volume synthesized from that directory (tree → FAT32 →
 *          FUSE file → tgtd), and of a plain-file LUN holding the same bytes on a tgtd of its own
 *          (tgtd's defaults: buffered; for reference also the same file as an O_DIRECT LUN, as the
 *          agent opens the FAT32 volume's FUSE file).
 *
 * Cold means nothing of the data is in any cache: before every cold round the agent is stopped (so
 * its FUSE files, loop devices and kernel mounts are new), the store's cache directory is deleted,
 * and the page cache of every file the round reads — the plain file, the plain LUN's image, every
 * store object — is dropped per file (posix_fadvise DONTNEED; never the whole machine's caches:
 * others benchmark on it too). `fincore` checks that before each cold read. Warm runs follow the
 * last cold round. Every figure is printed; the ratio uses the medians. Goal: ≥ 0.8× the plain path.
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
const mb = (bytes: number, s: number): number => bytes / s / 1e6;

// One process for thousands of store objects (a dd per file would take longer than the read).
const EVICT_PY = `
import os, sys
for top in sys.argv[1:]:
    for root, _, files in (os.walk(top) if os.path.isdir(top) else [(os.path.dirname(top), None, [os.path.basename(top)])]):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
`;

/** Drops the page cache of these files (directories: every file below), per file. */
async function evict(paths: string[]): Promise<void> {
  if ((await sh('python3', ['-c', EVICT_PY, ...paths])).code === 0) return;
  for (const p of paths) await must('sh', ['-c', `find "$1" -type f -exec dd iflag=nocache count=0 status=none if={} \\;`, 'sh', p]);
}

/** Bytes of `path` (a file, or every file below a directory) in the page cache, by fincore. */
async function resident(path: string): Promise<number> {
  const out = await must('sh', ['-c', 'find "$1" -type f -print0 | xargs -0 -r fincore --bytes --noheadings --output RES', 'sh', path]);
  return out
    .split('\n')
    .filter((l) => l.trim())
    .reduce((sum, l) => sum + Number(l.trim()), 0);
}

async function loadavg(): Promise<string> {
  return (await must('uptime', [])).trim().replace(/.*load average/, 'load average');
}

interface Figures {
  cold: number[];
  warm: number[];
}

export async function run(args: string[]): Promise<void> {
  const size = parseSize(arg(args, '--size', '1G'));
  const runs = Number(arg(args, '--runs', '3'));
  const dir = AgentProcess.tempDir('bridge-bench-exports-');
  const say = (s: string): boolean => process.stdout.write(s + '\n');
  let agent: AgentProcess | undefined;
  let tgtdPid: number | undefined;
  const loadBefore = await loadavg();
  try {
    say(`preparing ${formatSize(size)} of random data in a directory and in ext4 on a chunked store ...`);
    mkdirSync(join(dir, 'tree'));
    mkdirSync(join(dir, 'local'));
    const file = join(dir, 'tree', 'big.bin');
    await must('sh', ['-c', `head -c ${size} /dev/urandom > ${file}`]);
    // ext4 on the store, filled once through its FUSE file.
    const volSize = Math.max(2 * size, 256 * 1024 * 1024);
    const storeDir = join(dir, 'vol');
    const store = `dir:${storeDir}`;
    mkdirSync(storeDir);
    await createStore({ store, size: volSize, passphrase: 'bench', kdf: { N: 1024, r: 8, p: 1 } });
    const dev = await openStore({ store, passphrase: 'bench', cacheDir: join(dir, 'cache-fill'), cacheSize: 512 * 1024 * 1024 });
    const bf = await BlockFile.expose(dev, join(dir, 'fill'));
    await must('mkfs.ext4', ['-q', '-F', bf.path]);
    mkdirSync(join(dir, 'fillmnt'));
    await must('mount', ['-o', 'loop', bf.path, join(dir, 'fillmnt')]);
    await must('cp', [file, join(dir, 'fillmnt', 'big.bin')]);
    await must('umount', [join(dir, 'fillmnt')]);
    await bf.close();
    rmSync(join(dir, 'cache-fill'), { recursive: true, force: true });

    const smbPort = await freePort();
    const iscsiPort = await freePort();
    const cacheDir = join(dir, 'cache');
    const a = new AgentProcess(
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
            cache: { dir: cacheDir, size: Math.max(size + 256 * 1024 * 1024, 512 * 1024 * 1024) },
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
    agent = a;
    const startAgent = async (): Promise<void> => {
      await a.start();
      const down = (await a.status()).exports.filter((e) => e.health !== 'ok');
      if (down.length) throw new Error(`exports not ok: ${JSON.stringify(down)}`);
    };

    // Reads go to /dev/null: writing 1 GiB of output would put the figures at the mercy of writeback.
    const get = (share: string): Promise<number> =>
      timed(() => must('smbclient', [`//127.0.0.1/${share}`, '-p', String(smbPort), '-U', 'bridgebench%bench', '-c', 'get big.bin /dev/null']));
    const fatUrl = `iscsi://bench%bench-chap-secret@127.0.0.1:${iscsiPort}/iqn.2026-11.org.bridge:fat/1`;
    // Into a null block device: qemu-img refuses /dev/null as a target (smaller than the LUN).
    const convert = (url: string, bytes: number): Promise<number> =>
      timed(() => must('qemu-img', ['convert', '-n', url, '--target-image-opts', `driver=null-co,size=${bytes}`]));

    // The plain LUN holds the FAT32 volume's bytes, on a tgtd of its own.
    await startAgent();
    const plainImg = join(dir, 'plain-lun.raw');
    const lunBytes = Number((await a.status()).stages.find((s) => s.name === 'fat')?.details?.['size']);
    if (!lunBytes) throw new Error('the fat32 stage reports no size');
    // Fully allocated, so that tgtd reads every block (a hole would be skipped by qemu-img).
    await must('qemu-img', ['convert', '-O', 'raw', '-t', 'none', fatUrl, join(dir, 'lun-copy.raw')]);
    await must('cp', ['--sparse=never', join(dir, 'lun-copy.raw'), plainImg]);
    rmSync(join(dir, 'lun-copy.raw'));
    if (statSync(plainImg).size !== lunBytes) throw new Error('plain LUN image has the wrong size');
    const plainPort = await freePort();
    const control = freeControlPort();
    const tgtd = spawn('tgtd', ['-f', '-C', String(control), '--iscsi', `portal=127.0.0.1:${plainPort}`], { stdio: 'ignore', detached: true });
    tgtdPid = tgtd.pid;
    const adm = (...a: string[]): Promise<string> => must('tgtadm', ['-C', String(control), '--lld', 'iscsi', ...a]);
    for (let i = 0; i < 50; i++) {
      if ((await sh('tgtadm', ['-C', String(control), '--lld', 'iscsi', '--mode', 'system', '--op', 'show'])).code === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await adm('--mode', 'target', '--op', 'new', '--tid', '1', '-T', 'iqn.2026-11.org.bench:plain');
    await adm('--mode', 'logicalunit', '--op', 'new', '--tid', '1', '--lun', '1', '-b', plainImg);
    // For reference: the same file with O_DIRECT, as the agent opens FAT32 volumes (docs/agent.md).
    await adm('--mode', 'logicalunit', '--op', 'new', '--tid', '1', '--lun', '2', '-b', plainImg, '--bsoflags', 'direct');
    await adm('--mode', 'target', '--op', 'bind', '--tid', '1', '-I', 'ALL');
    const plainUrl = `iscsi://127.0.0.1:${plainPort}/iqn.2026-11.org.bench:plain/1`;
    const plainDirectUrl = `iscsi://127.0.0.1:${plainPort}/iqn.2026-11.org.bench:plain/2`;

    const fig: Record<'smbPlain' | 'smbStore' | 'lunPlain' | 'lunPlainDirect' | 'lunFat', Figures> = {
      smbPlain: { cold: [], warm: [] },
      smbStore: { cold: [], warm: [] },
      lunPlain: { cold: [], warm: [] },
      lunPlainDirect: { cold: [], warm: [] },
      lunFat: { cold: [], warm: [] },
    };
    /** Evicts `files` and checks that nothing of them is left in the page cache. */
    const coldStart = async (files: string[]): Promise<void> => {
      await evict(files);
      for (const f of files) {
        const left = await resident(f);
        if (left > 1024 * 1024) throw new Error(`${f}: ${left} bytes still cached after eviction`);
      }
    };
    for (let round = 1; round <= runs; round++) {
      say(`cold round ${round}/${runs} ...`);
      await a.stop();
      rmSync(cacheDir, { recursive: true, force: true });
      await coldStart([file, storeDir, plainImg]);
      await startAgent();
      // The agent read the FAT32 source while building the volume (directory entries only) and
      // ext4's metadata while mounting: evict the data files again right before each read.
      await coldStart([file]);
      fig.smbPlain.cold.push(mb(size, await get('plain')));
      await coldStart([storeDir]);
      fig.smbStore.cold.push(mb(size, await get('store')));
      await coldStart([file]);
      fig.lunFat.cold.push(mb(lunBytes, await convert(fatUrl, lunBytes)));
      await coldStart([plainImg]);
      fig.lunPlain.cold.push(mb(lunBytes, await convert(plainUrl, lunBytes)));
      await coldStart([plainImg]);
      fig.lunPlainDirect.cold.push(mb(lunBytes, await convert(plainDirectUrl, lunBytes)));
    }
    say('warm runs ...');
    for (let i = 0; i < runs; i++) {
      fig.smbPlain.warm.push(mb(size, await get('plain')));
      fig.smbStore.warm.push(mb(size, await get('store')));
      fig.lunFat.warm.push(mb(lunBytes, await convert(fatUrl, lunBytes)));
      fig.lunPlain.warm.push(mb(lunBytes, await convert(plainUrl, lunBytes)));
      fig.lunPlainDirect.warm.push(mb(lunBytes, await convert(plainDirectUrl, lunBytes)));
    }
    await adm('--mode', 'target', '--op', 'delete', '--force', '--tid', '1');
    await adm('--mode', 'system', '--op', 'delete');
    tgtd.kill('SIGTERM');
    tgtdPid = undefined;

    const list = (xs: number[]): string => xs.map((x) => x.toFixed(0)).join('/');
    const row = (label: string, r: Figures, plain?: Figures): string =>
      `${label.padEnd(48)} cold ${list(r.cold).padStart(14)}   warm ${list(r.warm).padStart(14)} MB/s` +
      (plain ? `   ${(median(r.cold) / median(plain.cold)).toFixed(2)}× cold, ${(median(r.warm) / median(plain.warm)).toFixed(2)}× warm` : '');
    say('');
    say(`exports benchmark: ${formatSize(size)} file, ${runs} cold rounds and ${runs} warm runs, this machine, same run`);
    say(`load before: ${loadBefore}; after: ${await loadavg()}`);
    say(row('SMB get, Samba on a plain directory', fig.smbPlain));
    say(row('SMB get, Samba on ext4 on chunked store (FUSE)', fig.smbStore, fig.smbPlain));
    say(row('iSCSI qemu-img convert, plain-file LUN', fig.lunPlain));
    say(row('iSCSI qemu-img convert, FAT32 volume (FUSE)', fig.lunFat, fig.lunPlain));
    say(row('  (reference: plain-file LUN, bsoflags=direct)', fig.lunPlainDirect));
    say(row('  FAT32 volume vs that direct plain-file LUN', fig.lunFat, fig.lunPlainDirect));
  } finally {
    if (tgtdPid) process.kill(tgtdPid, 'SIGKILL');
    await agent?.stop();
    rmSync(dir, { recursive: true, force: true });
    await sh('userdel', ['bridgebench']);
  }
}
