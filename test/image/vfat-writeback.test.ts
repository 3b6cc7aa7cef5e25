/**
 * FAT32 write-back with the Linux kernel's vfat driver as the host: inside the appliance VM,
 * `bridge-agent fat32 serve` serves a writable volume from a source tree, the guest kernel mounts it
 * (`losetup -o 1048576` + `mount -t vfat`) and a seeded sequence of shell operations (create, write at
 * an offset, append, truncate, delete, mkdir, rmdir, rename within and across directories, long and
 * Unicode names) runs on the mount and on a model directory alike. vfat caches and writes FAT and
 * directory sectors in its own order (not mtools'), so flushes in between may find the volume
 * half-written. After each round: `sync` (everything reaches the agent) and an fsync of the mount's
 * root (fat_file_fsync issues the block-device flush that reaches the agent's flush), then the source
 * must equal the model. At the end: umount (the loop device's close flushes again), source == model,
 * `fsck.fat -n` clean, and a fresh read-only mount reads back as the model.
 *
 * BRIDGE_SEED=N another seed, BRIDGE_VFAT_OPS=N another number of operations per round.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '../helpers/random.js';
import { bootAppliance, buildImage, sshExec, waitForSsh, type ApplianceVm, type BuiltImage } from './appliance-vm.js';

const SEED = Number(process.env.BRIDGE_SEED ?? 20261202);
const ROUNDS = 5;
const OPS = Number(process.env.BRIDGE_VFAT_OPS ?? 60);

let image: BuiltImage;
let vm: ApplianceVm;

async function guest(command: string, timeoutMs = 180_000): Promise<string> {
  const r = await sshExec(vm, command, timeoutMs);
  if (r.code !== 0) throw new Error(`guest: exit ${r.code}\n${r.stdout}\n${r.stderr}\nconsole:\n${vm.console().split('\n').slice(-20).join('\n')}`);
  return r.stdout;
}

const SRC = '/tmp/wb-src';
const MODEL = '/tmp/wb-model';
const FUSE = '/tmp/wb-fuse';
const MNT = '/tmp/wb-mnt';
const LOG = '/tmp/wb-agent.log';

/** Shell definitions every round's script starts with: `both CMD` runs CMD in the mount and in the model. */
const PRELUDE = `
set -eu
V=${MNT}; M=${MODEL}
both() { ( cd "$V" && eval "$1" ) || { echo "on the vfat mount: $1" >&2; exit 1; }; ( cd "$M" && eval "$1" ) || { echo "on the model: $1" >&2; exit 1; }; }
data() { head -c "$1" /dev/urandom > /tmp/wb-data; }
`;

/** The tree as the generator sees it (paths relative to the root, '' is the root). */
class Model {
  readonly files = new Map<string, number>();
  readonly dirs = new Set<string>(['']);
  private serial = 0;
  constructor(private readonly rng: Rng) {}

  children(dir: string): string[] {
    return [...this.files.keys(), ...this.dirs].filter((p) => p !== '' && parentOf(p) === dir);
  }

  /** A new name, unique (ignoring case) in its directory: 8.3 upper and lower, long, Unicode (BMP and astral), spaces, several dots. */
  fresh(dir: string): string {
    const n = this.serial++;
    const name = this.rng.pick([
      `UP${n}.TXT`,
      `low${n}.txt`,
      `Mixed Case ${n}.Data`,
      `${'a very long file name that needs many slots '.slice(0, this.rng.int(20, 44))}${n}.bin`,
      `ünïcödé ${n}`,
      `名前${n}.txt`,
      `Ωμέγα-файл-${n}`,
      `emoji 😀 ${n}`,
      `multi.dot.name.${n}.tar.gz`,
      `n${n}`,
    ]);
    return dir ? `${dir}/${name}` : name;
  }
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}

const q = (p: string): string => `'${p}'`;

/** One round of operations as a shell script, updating the model. */
function round(m: Model, rng: Rng, ops: number): { script: string; counts: Record<string, number> } {
  const lines: string[] = [];
  const counts: Record<string, number> = {};
  const size = (): number => rng.pick([0, 1, 511, 512, 2047, 2048, 2049, 4096, rng.int(1, 30_000), rng.int(30_000, 300_000)]);
  for (let i = 0; i < ops; i++) {
    const files = [...m.files.keys()];
    const dirs = [...m.dirs];
    let kind = rng.pick(['create', 'create', 'write-at', 'append', 'truncate', 'delete', 'mkdir', 'rmdir', 'rename', 'move', 'move-dir', 'fsync']);
    if (files.length === 0 && kind !== 'mkdir') kind = 'create';
    if (kind === 'fsync') {
      // A flush in the middle: vfat writes this file (or directory) and the FAT, then flushes the
      // device, while other changes may still sit in its cache (the agent may see a half-written volume).
      const p = rng.pick([...files, ...dirs]);
      lines.push(`sync ${q(p ? `${MNT}/${p}` : MNT)}`);
    } else if (kind === 'create') {
      const p = m.fresh(rng.pick(dirs));
      const n = size();
      lines.push(`data ${n}; both "cat /tmp/wb-data > ${q(p)}"`);
      m.files.set(p, n);
    } else if (kind === 'write-at') {
      const p = rng.pick(files);
      const at = rng.int(0, m.files.get(p)! + 3000);
      const n = rng.int(1, 9000);
      lines.push(`data ${n}; both "dd if=/tmp/wb-data of=${q(p)} bs=65536 seek=${at} oflag=seek_bytes conv=notrunc status=none"`);
      m.files.set(p, Math.max(m.files.get(p)!, at + n));
    } else if (kind === 'append') {
      const p = rng.pick(files);
      const n = rng.int(1, 20_000);
      lines.push(`data ${n}; both "cat /tmp/wb-data >> ${q(p)}"`);
      m.files.set(p, m.files.get(p)! + n);
    } else if (kind === 'truncate') {
      const p = rng.pick(files);
      const n = rng.int(0, 1) ? rng.int(0, m.files.get(p)!) : m.files.get(p)! + rng.int(1, 10_000);
      lines.push(`both "truncate -s ${n} ${q(p)}"`);
      m.files.set(p, n);
    } else if (kind === 'delete') {
      const p = rng.pick(files);
      lines.push(`both "rm ${q(p)}"`);
      m.files.delete(p);
    } else if (kind === 'mkdir') {
      const p = m.fresh(rng.pick(dirs));
      lines.push(`both "mkdir ${q(p)}"`);
      m.dirs.add(p);
    } else if (kind === 'rmdir') {
      const empty = dirs.filter((d) => d !== '' && m.children(d).length === 0);
      if (empty.length === 0) continue;
      const p = rng.pick(empty);
      lines.push(`both "rmdir ${q(p)}"`);
      m.dirs.delete(p);
    } else if (kind === 'rename') {
      const p = rng.pick(files);
      const to = m.fresh(parentOf(p));
      lines.push(`both "mv ${q(p)} ${q(to)}"`);
      m.files.set(to, m.files.get(p)!);
      m.files.delete(p);
    } else {
      const movable = kind === 'move-dir' ? dirs.filter((d) => d !== '') : files;
      if (movable.length === 0) continue;
      const p = rng.pick(movable);
      const targets = dirs.filter((d) => d !== p && !d.startsWith(p + '/'));
      const to = m.fresh(rng.pick(targets));
      lines.push(`both "mv ${q(p)} ${q(to)}"`);
      const rebase = (x: string): string => (x === p || x.startsWith(p + '/') ? to + x.slice(p.length) : x);
      for (const [f, n] of [...m.files]) {
        const r = rebase(f);
        if (r !== f) {
          m.files.delete(f);
          m.files.set(r, n);
        }
      }
      for (const d of [...m.dirs]) {
        const r = rebase(d);
        if (r !== d) {
          m.dirs.delete(d);
          m.dirs.add(r);
        }
      }
    }
    counts[kind] = (counts[kind] ?? 0) + 1;
  }
  return { script: PRELUDE + lines.join('\n') + '\n', counts };
}

/** Source vs model in the guest (the journal directory is the agent's own); prints SAME or the differences. */
const COMPARE = `diff -r -x .bridge-fat32 ${SRC} ${MODEL} && echo SOURCE-SAME || { echo SOURCE-DIFFERENT; tail -n 40 ${LOG} | grep -v "write-back plan"; }`;

/** BRIDGE_VFAT_DEBUG=1: where `tree` and the model differ, the round's script and the agent's log, into /tmp/vfat-debug.txt. */
async function debugDump(when: string, tree: string, script: string): Promise<void> {
  const detail = await guest(
    `cd ${MODEL}; find . -type f -print0 | while IFS= read -r -d '' f; do cmp -s "$f" "${tree}/$f" || { ls -l "$f" "${tree}/$f"; cmp -l "$f" "${tree}/$f" | awk 'NR==1{f=$1} {l=$1} NR<4{print} END{print "differ from byte", f, "to", l, NR, "bytes"}'; }; done 2>&1 | head -60`,
  );
  const { writeFileSync } = await import('node:fs');
  const dmesg = await guest('dmesg | tail -n 30');
  writeFileSync('/tmp/vfat-debug.txt', `${when}\n${detail}\ndmesg:\n${dmesg}\nscript:\n${script}\nagent log:\n${await guest(`cat ${LOG}`)}`);
}

beforeAll(async () => {
  image = await buildImage();
  vm = await bootAppliance(image, { memoryMiB: 1024 });
  await waitForSsh(vm, 'true', 180_000);
}, 20 * 60_000);

afterAll(async () => {
  await vm?.close();
}, 60_000);

describe('FAT32 write-back with the Linux vfat driver (in the appliance VM)', () => {
  it(`applies ${ROUNDS} rounds of ${OPS} seeded shell operations made through vfat (seed ${SEED})`, { timeout: 600_000 }, async () => {
    // A starting tree, the same in the source and the model.
    await guest(`
      set -e
      mkdir -p ${SRC}/Docs/Deep ${SRC}/Empty ${FUSE} ${MNT}
      head -c 100000 /dev/urandom > ${SRC}/Docs/Report.bin
      echo hello > ${SRC}/hello.txt
      head -c 5000 /dev/urandom > "${SRC}/Docs/Deep/Ünïcode file.dat"
      cp -a ${SRC} ${MODEL}
      bridge-agent --log-level ${process.env.BRIDGE_VFAT_DEBUG ? 'debug' : 'info'} fat32 serve --source ${SRC} --size 256M ${FUSE} > ${LOG} 2>&1 &
      for i in $(seq 1 600); do [ -e ${FUSE}/disk.img ] && break; kill -0 $! || { cat ${LOG}; exit 1; }; sleep 0.2; done
      [ -e ${FUSE}/disk.img ] || { cat ${LOG}; exit 1; }
      echo $! > /tmp/wb-agent.pid
      losetup -f --show -o 1048576 ${FUSE}/disk.img > /tmp/wb-loop
      mount -t vfat -o utf8,shortname=mixed $(cat /tmp/wb-loop) ${MNT}
    `);
    const rng = new Rng(SEED);
    const m = new Model(rng);
    for (const f of [
      ['Docs/Report.bin', 100_000],
      ['hello.txt', 6],
      ['Docs/Deep/Ünïcode file.dat', 5000],
    ] as const)
      m.files.set(f[0], f[1]);
    for (const d of ['Docs', 'Docs/Deep', 'Empty']) m.dirs.add(d);
    const total: Record<string, number> = {};
    const scripts: string[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const { script, counts } = round(m, rng, OPS);
      scripts.push(script);
      for (const [k, v] of Object.entries(counts)) total[k] = (total[k] ?? 0) + v;
      await guest(script);
      // sync writes every dirty FAT, directory and data sector through the loop device; the fsync of
      // the mount's root makes vfat issue a block-device flush, which reaches the agent's flush.
      const out = await guest(`sync && sync ${MNT} && ${COMPARE}`);
      if (!out.includes('SOURCE-SAME')) {
        if (process.env.BRIDGE_VFAT_DEBUG) await debugDump(`after round ${r}:\n${out}`, SRC, scripts.join('\n'));
        throw new Error(`after round ${r}, the source differs from the model:\n${out}`);
      }
    }
    console.log(`vfat write-back: ${ROUNDS * OPS} operations`, total);
    const end = await guest(`
      set -e
      umount ${MNT}
      loop=$(cat /tmp/wb-loop)
      ${COMPARE}
      fsck.fat -n $loop 2>&1 && echo FSCK-CLEAN || echo FSCK-PROBLEMS
      mount -t vfat -o ro,utf8,shortname=mixed $loop ${MNT}
      diff -r ${MNT} ${MODEL} && echo READBACK-SAME || echo READBACK-DIFFERENT
      umount ${MNT}; losetup -d $loop
      echo "held flushes: $(grep -c 'host changes held' ${LOG} || true), applied flushes: $(grep -c 'host changes applied' ${LOG} || true)"
    `);
    console.log(end);
    if (process.env.BRIDGE_VFAT_DEBUG && !end.includes('READBACK-SAME')) {
      // A new loop device with direct I/O after dropping caches: the agent's view, not the guest's caches.
      await guest(
        `sync; echo 3 > /proc/sys/vm/drop_caches; mount -t vfat -o ro,utf8,shortname=mixed $(losetup -f --show -r --direct-io=on -o 1048576 ${FUSE}/disk.img) ${MNT}`,
      );
      await debugDump('read back (direct I/O, caches dropped)', MNT, scripts.join('\n'));
    }
    expect(end).toContain('SOURCE-SAME');
    expect(end).toContain('FSCK-CLEAN');
    expect(end).toContain('READBACK-SAME');
    const log = await guest(`cat ${LOG}`);
    expect(log).not.toMatch(/write-back suspended|failed/);
    await guest(`kill $(cat /tmp/wb-agent.pid); for i in $(seq 1 100); do kill -0 $(cat /tmp/wb-agent.pid) 2>/dev/null || exit 0; sleep 0.1; done; exit 1`);
  });
});
