/**
 * The appliance image end to end: build (or reuse) it, boot it once under QEMU/TCG with user
 * networking and share that boot across the cases: SSH by key only, the agent's version stamp, an
 * ext4 disk made here exported over SMB and read with smbclient, a real-kernel vfat mount of a FAT32
 * volume served inside the guest, and a clean power-off.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VERSION } from '../../shared/src/version.js';
import { Rng } from '../helpers/random.js';
import { bootAppliance, buildImage, sshExec, waitForSsh, type ApplianceVm, type BuiltImage } from './appliance-vm.js';
import { generateEd25519 } from '../../wrapper/src/keys.js';

const run = promisify(execFile);
const SMB_PASSWORD = 'correct-horse-7';

let image: BuiltImage;
let vm: ApplianceVm;
let work: string;
let randomFile: Buffer;

/** One guest command, failing with its output and the console tail. */
async function guest(command: string, timeoutMs = 120_000, stdin?: string): Promise<string> {
  const r = await sshExec(vm, command, timeoutMs, { privateKey: vm.privateKey }, stdin);
  if (r.code !== 0) throw new Error(`guest: ${command}: exit ${r.code}\n${r.stdout}\n${r.stderr}\nconsole:\n${vm.console().split('\n').slice(-20).join('\n')}`);
  return r.stdout;
}

beforeAll(async () => {
  image = await buildImage();
  work = mkdtempSync(join(tmpdir(), 'bridge-image-test-'));
  // The source disk: an ext4 filesystem built from a directory (no mount needed on the host).
  const tree = join(work, 'tree');
  mkdirSync(join(tree, 'sub'), { recursive: true });
  writeFileSync(join(tree, 'hello.txt'), 'hello from an ext4 disk\n');
  randomFile = new Rng(7).bytes(300_000);
  writeFileSync(join(tree, 'sub', 'random.bin'), randomFile);
  await run('mkfs.ext4', ['-q', '-F', '-L', 'testdata', '-d', tree, join(work, 'data.ext4'), '32M']);
  vm = await bootAppliance(image, {
    disks: [join(work, 'data.ext4')],
    forward: [445],
    agent: {
      version: 1,
      // Exports must listen on the guest's NIC: QEMU's port forwards arrive at 10.0.2.15.
      listen: { address: '0.0.0.0' },
      users: [{ name: 'alice', password: { pushed: 'alice-password' } }],
      sources: [{ kind: 'disk', name: 'data', path: 'serial:bridge-src0', partition: 'whole', fstype: 'ext4', readOnly: true }],
      exports: [{ kind: 'smb', name: 'data', from: 'data', users: ['alice'], readOnly: true }],
    },
  });
  await waitForSsh(vm, 'test -S /run/bridge/control.sock', 180_000);
}, 20 * 60_000);

afterAll(async () => {
  await vm?.close();
  if (work) rmSync(work, { recursive: true, force: true });
}, 60_000);

describe('appliance image', () => {
  it('has a manifest naming its files, its version and a compressed size within budget', () => {
    const m = image.manifest;
    expect(m.version).toBe(`${VERSION}+${m.hash.slice(0, 12)}`);
    for (const f of [m.kernel, m.initrd, m.disk]) expect(existsSync(join(image.dir, f))).toBe(true);
    expect(m.cmdline).toContain('root=LABEL=bridge-root');
    expect(m.compressedSize).toBeGreaterThan(10 << 20);
    expect(m.compressedSize).toBeLessThanOrEqual(200 * 1000 * 1000);
    expect(m.guest).toEqual({ sshUser: 'root', sshPort: 22, smbPort: 445, nfsPort: 2049, iscsiPort: 3260 });
  });

  it('is a bootable MBR disk: boot partition with syslinux, root partition labelled bridge-root', async () => {
    const disk = join(image.dir, image.manifest.disk);
    const mbr = readFileSync(disk).subarray(0, 512);
    expect(mbr.readUInt16LE(510)).toBe(0xaa55);
    expect(mbr[446]).toBe(0x80); // partition 1 active
    const { stdout } = await run('mdir', ['-b', '-i', `${disk}@@1M`, '::/']);
    expect(stdout).toMatch(/VMLINUZ|vmlinuz/i);
    const { stdout: cfg } = await run('mtype', ['-i', `${disk}@@1M`, '::/syslinux/syslinux.cfg']);
    expect(cfg).toContain(image.manifest.cmdline);
  });

  it('is reused when nothing changed (cached by content hash)', async () => {
    // --no-compile: other engineers' tsc runs in this shared tree would legitimately change the hash.
    const first = await buildImage(['--no-compile']);
    const again = await buildImage(['--no-compile']);
    expect(again.manifestPath).toBe(first.manifestPath);
    expect(again.log).toMatch(/cached/);
  });

  it('accepts the config-drive key and reports the image version', async () => {
    expect((await guest('cat /etc/bridge-image-version')).trim()).toBe(image.manifest.version);
    expect((await guest('hostname')).trim()).toBe('bridge-test');
    expect((await guest('cat /root/.ssh/authorized_keys')).trim().split('\n')).toHaveLength(1);
  });

  it('refuses passwords and other keys', async () => {
    await expect(sshExec(vm, 'true', 20_000, { password: 'root' })).rejects.toThrow(/authentication/i);
    const stranger = generateEd25519('stranger').private;
    await expect(sshExec(vm, 'true', 20_000, { privateKey: stranger })).rejects.toThrow(/authentication/i);
  });

  it('listens on nothing but sshd and the configured export', async () => {
    const out = await guest('busybox netstat -ltn');
    const ports = new Set(
      out
        .split('\n')
        .filter((l) => l.startsWith('tcp'))
        .map((l) => Number(l.trim().split(/\s+/)[3]!.split(':').pop()))
        .filter((p) => !Number.isNaN(p)),
    );
    expect(ports.has(22)).toBe(true);
    for (const p of ports) expect([22, 445], `unexpected listener on port ${p}:\n${out}`).toContain(p);
  });

  it('runs the agent, which reports the image version', async () => {
    await guest('bridge-agent secret put alice-password', 120_000, SMB_PASSWORD);
    const status = JSON.parse(await guest('bridge-agent status --json')) as { imageVersion?: string; ready: boolean };
    expect(status.imageVersion).toBe(image.manifest.version);
  });

  it('exports the attached ext4 disk over SMB, read with smbclient on the host', async () => {
    const port = vm.ports.get(445)!;
    const local = join(work, 'random.bin');
    let last = '';
    for (let i = 0; i < 120; i++) {
      try {
        const { stdout } = await run('smbclient', [
          `//127.0.0.1/data`,
          '-p',
          String(port),
          '-U',
          `alice%${SMB_PASSWORD}`,
          '-c',
          `ls; get sub/random.bin ${local}`,
        ]);
        expect(stdout).toContain('hello.txt');
        break;
      } catch (e) {
        last = String(e);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
    expect(existsSync(local), `smbclient never succeeded: ${last}`).toBe(true);
    expect(readFileSync(local).equals(randomFile)).toBe(true);
    const denied = await run('smbclient', [`//127.0.0.1/data`, '-p', String(port), '-U', 'alice%wrong', '-c', 'ls']).then(
      () => 'accepted',
      (e: { stdout?: string }) => String(e.stdout),
    );
    expect(denied).toMatch(/LOGON_FAILURE|ACCESS_DENIED/);
  });

  it('mounts a FAT32 volume served inside the guest with the real vfat driver', async () => {
    // Serve a tree as FAT32 with the agent, then let the guest kernel read it back and compare.
    const script = `
      set -e
      src=/tmp/fat-src; mnt=/tmp/fat-mnt; fuse=/tmp/fat-fuse
      mkdir -p $src/dir $mnt
      echo "hello fat32" > $src/hello.txt
      head -c 200000 /opt/bridge/dist/appliance/src/cli.js > $src/dir/cli-head.js 2>/dev/null || head -c 200000 /usr/local/bin/node > $src/dir/cli-head.js
      bridge-agent fat32 serve --source $src --size 64M $fuse > /tmp/fat.log 2>&1 &
      pid=$!
      for i in $(seq 1 600); do [ -e $fuse/disk.img ] && break; kill -0 $pid || { cat /tmp/fat.log; exit 1; }; sleep 0.2; done
      loop=$(losetup -f --show -r -o 1048576 $fuse/disk.img)
      mount -t vfat -o ro $loop $mnt
      diff -r $src $mnt && echo SAME
      umount $mnt; losetup -d $loop; kill $pid; wait $pid || true
    `;
    expect(await guest(script, 240_000)).toContain('SAME');
  });

  it('powers off cleanly on request', async () => {
    await sshExec(vm, 'bridge-agent guest poweroff', 30_000);
    const code = await Promise.race([vm.exited, new Promise((r) => setTimeout(() => r('timeout'), 60_000))]);
    expect(code).toBe(0);
    expect(vm.console()).toContain('bridge-init');
  });
});
