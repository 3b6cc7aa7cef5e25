import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { VmSpec } from '../../wrapper/src/hypervisors/backend.js';
import { qemuImgConvert } from '../../wrapper/src/hypervisors/backend.js';
import { HyperVBackend, psQuote } from '../../wrapper/src/hypervisors/hyperv.js';
import { ParallelsBackend } from '../../wrapper/src/hypervisors/parallels.js';
import { kernelProbeArgs, parseQemuVersion, qemuArgs, QemuBackend, qmpSocketPath } from '../../wrapper/src/hypervisors/qemu.js';
import { VirtualBoxBackend } from '../../wrapper/src/hypervisors/virtualbox.js';
import { rawVmdkDescriptor, VmwareBackend, vmxText } from '../../wrapper/src/hypervisors/vmware.js';
import { FakeRunner } from './fake-runner.js';

let dir: string;
let spec: VmSpec;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'bridge-backends-'));
  writeFileSync(join(dir, 'src.img'), Buffer.alloc(1024 * 1024));
  spec = {
    name: 'demo',
    dir,
    bootDisk: { path: '/img/appliance.raw', format: 'raw' },
    kernel: { kernel: '/img/vmlinuz', initrd: '/img/initrd.img', cmdline: 'root=LABEL=bridge-root console=ttyS0' },
    memoryMiB: 1024,
    cpus: 2,
    disks: [
      { path: '/st/config.img', format: 'raw', serial: 'bridge-config', readOnly: true },
      { path: join(dir, 'src.img'), format: 'raw', serial: 'bridge-src1', readOnly: false },
    ],
    shares: [],
    forwards: [
      { name: 'ssh', hostPort: 40022, guestPort: 22 },
      { name: 'smb', hostPort: 40445, guestPort: 445 },
    ],
    accel: 'tcg',
  };
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('qemu', () => {
  it('builds the command line: direct boot, snapshot root, serial-named disks, forwards on 127.0.0.1', () => {
    const args = qemuArgs(spec, 'linux');
    const line = args.join(' ');
    expect(line).toContain('-accel tcg -cpu max');
    expect(line).toContain('-m 1024 -smp 2');
    expect(line).toContain(`-serial file:${join(dir, 'console.log')}`);
    expect(line).toContain(`-daemonize -pidfile ${join(dir, 'qemu.pid')}`);
    expect(args[args.indexOf('-append') + 1]).toBe('root=LABEL=bridge-root console=ttyS0');
    expect(line).toContain('-drive file=/img/appliance.raw,format=raw,if=none,id=root,snapshot=on');
    expect(line).toContain('-drive file=/st/config.img,format=raw,if=none,id=disk0,cache=writeback,readonly=on');
    expect(line).toContain('-device virtio-blk-pci,drive=disk0,serial=bridge-config');
    expect(line).toContain('-device virtio-blk-pci,drive=disk1,serial=bridge-src1');
    expect(line).not.toMatch(/id=disk1[^ ]*readonly/);
    expect(args[args.indexOf('-nic') + 1]).toBe('user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40445-:445');
  });

  it('uses the host CPU with an accelerator, virtfs for shares, and no -daemonize on Windows', () => {
    const args = qemuArgs({ ...spec, accel: 'kvm', shares: [{ tag: 'bridge-dir1', hostPath: '/data', readOnly: true }] }, 'win32').join(' ');
    expect(args).toContain('-accel kvm -cpu host');
    expect(args).toContain('-virtfs local,path=/data,mount_tag=bridge-dir1,security_model=none,id=fs0,readonly=on');
    expect(args).not.toContain('-daemonize');
  });

  it('keeps the QMP socket path short enough for a Unix socket', () => {
    expect(qmpSocketPath('/short')).toBe('/short/qmp.sock');
    const long = qmpSocketPath('/' + 'x'.repeat(150));
    expect(long.length).toBeLessThan(100);
    expect(long).toMatch(/bridge-qmp-[0-9a-f]{16}\.sock$/);
  });

  it('detects version and honours a forced accelerator; missing binary is reported', async () => {
    expect(parseQemuVersion('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)\n')).toBe('7.2.22');
    const r = new FakeRunner('linux', ['qemu-system-x86_64', 'qemu-img'], (c) =>
      c.args[0] === '--version' ? { stdout: 'QEMU emulator version 8.1.0\n' } : undefined,
    );
    const d = await new QemuBackend({ runner: r, accel: 'tcg' }).detect();
    expect(d).toMatchObject({ available: true, version: '8.1.0', acceleration: 'tcg', accelerated: false, tested: true });
    const none = await new QemuBackend({ runner: new FakeRunner('linux', []) }).detect();
    expect(none.available).toBe(false);
    expect(none.notes.join()).toMatch(/qemu-system-x86_64 not found/);
    await expect(new QemuBackend({ runner: r, accel: 'nope' }).detect()).rejects.toThrow(/--accel/);
  });

  it('probes an accelerator by running a guest: exit 99 means it works, anything else falls back to TCG; cached', async () => {
    const cache = join(dir, 'probe.json');
    let code = 99;
    const r = new FakeRunner('darwin', ['qemu-system-x86_64'], (c) => (c.args[0] === '--version' ? { stdout: 'QEMU emulator version 9.0.0' } : { code }));
    const d = await new QemuBackend({ runner: r, probeCacheFile: cache }).detect();
    expect(d.acceleration).toBe('hvf');
    const probe = r.calls.find((c) => c.args.includes('isa-debug-exit,iobase=0xf4,iosize=0x04'))!;
    expect(probe.args.slice(0, 2)).toEqual(['-accel', 'hvf']);
    code = 1;
    const again = await new QemuBackend({ runner: r, probeCacheFile: cache }).detect();
    expect(again.acceleration).toBe('hvf'); // cached verdict
    rmSync(cache);
    const fresh = await new QemuBackend({ runner: r, probeCacheFile: cache }).detect();
    expect(fresh.acceleration).toBe('tcg');
    expect(fresh.notes.join()).toMatch(/hvf is present but did not run a probe guest/);
  });
  it('with the appliance kernel known, accepts an accelerator only if that kernel boots to its no-root panic', async () => {
    const cache = join(dir, 'probe-kernel.json');
    const kernel = join(dir, 'vmlinuz');
    writeFileSync(kernel, Buffer.alloc(4096));
    let stdout = '[    0.9] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n';
    const r = new FakeRunner('darwin', ['qemu-system-x86_64'], (c) => (c.args[0] === '--version' ? { stdout: 'QEMU emulator version 7.2.22' } : { stdout }));
    const probe = (): Promise<string | undefined> =>
      new QemuBackend({ runner: r, probeCacheFile: cache, probeKernel: kernel }).detect().then((d) => d.acceleration);
    expect(await probe()).toBe('hvf');
    const call = r.calls.find((c) => c.args.includes('-kernel'))!;
    expect(call.args).toEqual(kernelProbeArgs('hvf', kernel));
    expect(call.args.join(' ')).toContain(`-serial stdio -no-reboot -kernel ${kernel} -append console=ttyS0 panic=-1`);
    // A kernel that prints nothing (it hangs until the time limit) means TCG; the verdict is cached per kernel.
    rmSync(cache);
    stdout = '';
    expect(await probe()).toBe('tcg');
    stdout = 'Kernel panic';
    expect(await probe()).toBe('tcg'); // cached
  });
});

describe('qemu-img conversion', () => {
  it('converts with progress parsed from -p output and the format options', async () => {
    const seen: number[] = [];
    const r = new FakeRunner('linux', ['qemu-img']);
    r.run = async (cmd, args, opts) => {
      r.calls.push({ cmd, args });
      opts?.onStdout?.('    (0.00/100%)\r    (50.00/100%)\r');
      opts?.onStdout?.('    (100.00/100%)\r');
      return { code: 0, stdout: '', stderr: '' };
    };
    await qemuImgConvert(r, 'a.raw', 'b.vhdx', 'vhdx', (p) => seen.push(p));
    expect(r.lines()).toEqual(['qemu-img convert -p -f raw -O vhdx -o subformat=dynamic a.raw b.vhdx']);
    expect(seen).toEqual([0, 50, 100]);
  });
});

describe('virtualbox', () => {
  it('creates the VM with VBoxManage: NAT forwards, serial file, AHCI disks with serial numbers, raw via VMDK descriptor', async () => {
    const r = new FakeRunner('linux', ['VBoxManage']);
    const vb = new VirtualBoxBackend({ runner: r });
    const ref = await vb.createVm({
      ...spec,
      bootDisk: { path: '/img/appliance.vdi', format: 'vdi' },
      disks: [{ ...spec.disks[0]!, path: '/st/config.vdi', format: 'vdi' }, spec.disks[1]!],
    });
    const l = r.lines();
    expect(l[0]).toBe(`VBoxManage createvm --name bridge-demo --basefolder ${dir} --ostype Linux_64 --register`);
    expect(l[1]).toContain('modifyvm bridge-demo --memory 1024 --cpus 2');
    expect(l[1]).toContain(`--nic1 nat --nictype1 virtio --uart1 0x3F8 4 --uartmode1 file ${join(dir, 'console.log')}`);
    expect(l[1]).toContain('--natpf1 ssh,tcp,127.0.0.1,40022,,22 --natpf1 smb,tcp,127.0.0.1,40445,,445');
    expect(l).toContain('VBoxManage storagectl bridge-demo --name SATA --add sata --controller IntelAhci --portcount 3');
    expect(l).toContain('VBoxManage storageattach bridge-demo --storagectl SATA --port 0 --device 0 --type hdd --medium /img/appliance.vdi --mtype immutable');
    expect(l).toContain('VBoxManage setextradata bridge-demo VBoxInternal/Devices/ahci/0/Config/Port1/SerialNumber bridge-config');
    expect(l).toContain('VBoxManage storageattach bridge-demo --storagectl SATA --port 1 --device 0 --type hdd --medium /st/config.vdi --mtype readonly');
    expect(l).toContain(
      `VBoxManage createmedium disk --filename ${join(dir, 'bridge-src1.vmdk')} --format VMDK --variant RawDisk --property RawDrive=${join(dir, 'src.img')}`,
    );
    expect(l).toContain(
      `VBoxManage storageattach bridge-demo --storagectl SATA --port 2 --device 0 --type hdd --medium ${join(dir, 'bridge-src1.vmdk')} --mtype normal`,
    );
    expect(ref).toMatchObject({ backend: 'virtualbox', id: 'bridge-demo' });
  });

  it('starts headless, stops with the ACPI button then powers off after the timeout, unregisters without deleting media', async () => {
    let state = 'running';
    const r = new FakeRunner('linux', ['VBoxManage'], (c) => {
      if (c.args[2] === 'poweroff') state = 'poweroff';
      return c.args[0] === 'showvminfo' ? { stdout: `name="bridge-demo"\nVMState="${state}"\n` } : undefined;
    });
    const vb = new VirtualBoxBackend({ runner: r, pollMs: 5 });
    const ref = { backend: 'virtualbox' as const, id: 'bridge-demo', dir, consoleLog: join(dir, 'console.log') };
    await vb.startVm(ref);
    await vb.stopVm(ref, 30);
    await vb.deleteVm(ref);
    const l = r.lines().filter((x) => !x.includes('showvminfo'));
    expect(l).toEqual([
      'VBoxManage startvm bridge-demo --type headless',
      'VBoxManage controlvm bridge-demo acpipowerbutton',
      'VBoxManage controlvm bridge-demo poweroff',
      'VBoxManage unregistervm bridge-demo',
    ]);
  });

  it('detects the version', async () => {
    const r = new FakeRunner('darwin', ['VBoxManage'], () => ({ stdout: '7.0.14r161095\n' }));
    expect(await new VirtualBoxBackend({ runner: r }).detect()).toMatchObject({ available: true, version: '7.0.14r161095', tested: false });
  });
});

describe('vmware', () => {
  it('writes a .vmx with SCSI disks (root non-persistent), NAT, serial to file; raw sources via flat VMDK descriptors', async () => {
    const r = new FakeRunner('linux', ['vmrun']);
    const vm = new VmwareBackend({ runner: r });
    const ref = await vm.createVm({
      ...spec,
      bootDisk: { path: '/img/appliance.vmdk', format: 'vmdk' },
      disks: [{ ...spec.disks[0]!, path: '/st/config.vmdk', format: 'vmdk' }, spec.disks[1]!],
    });
    expect(ref.id).toBe(join(dir, 'bridge-demo.vmx'));
    const vmx = readFileSync(ref.id, 'utf8');
    expect(vmx).toContain('displayName = "bridge-demo"');
    expect(vmx).toContain('memsize = "1024"');
    expect(vmx).toContain('scsi0:0.fileName = "/img/appliance.vmdk"');
    expect(vmx).toContain('scsi0:0.mode = "independent-nonpersistent"');
    expect(vmx).toContain('scsi0:1.mode = "independent-nonpersistent"'); // read-only config drive
    expect(vmx).toContain(`scsi0:2.fileName = "${join(dir, 'bridge-src1.vmdk')}"`);
    expect(vmx).toContain('scsi0:2.mode = "independent-persistent"');
    expect(vmx).toContain('ethernet0.connectionType = "nat"');
    expect(vmx).toContain(`serial0.fileName = "${join(dir, 'console.log')}"`);
    expect(readFileSync(join(dir, 'bridge-src1.vmdk'), 'utf8')).toContain(`RW 2048 FLAT "${join(dir, 'src.img')}" 0`);
    await vm.startVm(ref);
    expect(r.lines()).toEqual([`vmrun -T ws start ${ref.id} nogui`]);
  });

  it('reaches the guest at its NAT address with guest ports; stops soft then hard; never deleteVM', async () => {
    let listed = true;
    const r = new FakeRunner('darwin', [], (c) => {
      if (c.args[2] === 'getGuestIPAddress') return { stdout: '172.16.5.128\n' };
      if (c.args[2] === 'list') return { stdout: listed ? 'Total running VMs: 1\n/vm/bridge-demo.vmx\n' : 'Total running VMs: 0\n' };
      return undefined;
    });
    const vm = new VmwareBackend({ runner: r, pollMs: 5 });
    const ref = { backend: 'vmware' as const, id: '/vm/bridge-demo.vmx', dir, consoleLog: join(dir, 'console.log') };
    expect(await vm.reachable(ref, spec.forwards)).toEqual({ address: '172.16.5.128', ports: { ssh: 22, smb: 445 } });
    await vm.stopVm(ref, 20);
    const fusion = '/Applications/VMware Fusion.app/Contents/Library/vmrun -T fusion';
    expect(r.lines()).toContain(`${fusion} stop /vm/bridge-demo.vmx soft`);
    expect(r.lines()).toContain(`${fusion} stop /vm/bridge-demo.vmx hard`);
    listed = false;
    await vm.deleteVm(ref);
    expect(r.lines().some((l) => l.includes('deleteVM'))).toBe(false);
  });

  it('vmx and descriptor helpers are pure', () => {
    expect(rawVmdkDescriptor('/a b.img', 1000)).toContain('RW 2 FLAT "/a b.img" 0');
    expect(vmxText(spec, ['/r.vmdk'], '/c.log')).toContain('numvcpus = "2"');
  });
});

describe('hyper-v', () => {
  it('creates a generation 1 VM through a PowerShell script on stdin (VHDX only)', async () => {
    const r = new FakeRunner('win32', ['powershell.exe']);
    const hv = new HyperVBackend({ runner: r });
    const vhdx = {
      ...spec,
      bootDisk: { path: 'C:\\img\\appliance.vhdx', format: 'vhdx' as const },
      disks: [{ path: "C:\\st\\it's.vhdx", format: 'vhdx' as const, serial: 'bridge-config', readOnly: true }],
    };
    await hv.createVm(vhdx);
    expect(r.calls[0]!.args).toEqual(['-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass', '-Command', '-']);
    const script = r.calls[0]!.input!;
    expect(script).toContain(`New-VM -Name 'bridge-demo' -Generation 1 -MemoryStartupBytes 1024MB -NoVHD -SwitchName 'Default Switch' -Path '${dir}'`);
    expect(script).toContain("Set-VMProcessor -VMName 'bridge-demo' -Count 2");
    expect(script).toContain(
      "Add-VMHardDiskDrive -VMName 'bridge-demo' -ControllerType IDE -ControllerNumber 0 -ControllerLocation 0 -Path 'C:\\img\\appliance.vhdx'",
    );
    expect(script).toContain("-ControllerType SCSI -ControllerNumber 0 -ControllerLocation 0 -Path 'C:\\st\\it''s.vhdx'");
    expect(script).toContain("Set-VMComPort -VMName 'bridge-demo' -Number 1 -Path '\\\\.\\pipe\\bridge-demo'");
    await expect(hv.createVm(spec)).rejects.toThrow(/only VHDX/);
    expect(psQuote("a'b")).toBe("'a''b'");
  });

  it('stops gracefully then turns off; is unavailable off Windows', async () => {
    const r = new FakeRunner('win32', ['powershell.exe'], (c) => (c.input?.includes('.State') ? { stdout: 'Running\n' } : undefined));
    const hv = new HyperVBackend({ runner: r, pollMs: 5 });
    await hv.stopVm({ backend: 'hyperv', id: 'bridge-demo', dir, consoleLog: '' }, 20);
    const scripts = r.calls.map((c) => c.input!.split('\n')[1]);
    expect(scripts).toContain("Stop-VM -Name 'bridge-demo' -Force -AsJob | Out-Null");
    expect(scripts).toContain("Stop-VM -Name 'bridge-demo' -TurnOff -Force");
    expect((await new HyperVBackend({ runner: new FakeRunner('linux', []) }).detect()).available).toBe(false);
  });
});

describe('parallels', () => {
  it('creates the VM with prlctl and forwards ports with prlsrvctl; stop is ACPI then kill', async () => {
    const r = new FakeRunner('darwin', ['prlctl'], (c) => (c.args[0] === 'status' ? { stdout: 'VM bridge-demo exist running\n' } : undefined));
    const p = new ParallelsBackend({ runner: r, pollMs: 5 });
    const hdd = {
      ...spec,
      bootDisk: { path: '/img/appliance.hdd', format: 'parallels' as const },
      disks: [{ path: '/st/config.hdd', format: 'parallels' as const, serial: 'bridge-config', readOnly: true }],
    };
    const ref = await p.createVm(hdd);
    await p.stopVm(ref, 20);
    expect(r.lines().slice(0, 8)).toEqual([
      `prlctl create bridge-demo --ostype linux --distribution linux --no-hdd --dst ${dir}`,
      'prlctl set bridge-demo --memsize 1024 --cpus 2 --startup-view headless --autostart off',
      `prlctl set bridge-demo --device-add serial --output ${join(dir, 'console.log')}`,
      'prlctl set bridge-demo --device-add hdd --image /img/appliance.hdd --iface sata --position 0',
      'prlctl set bridge-demo --device-add hdd --image /st/config.hdd --iface sata --position 1',
      'prlctl set bridge-demo --device-set net0 --type shared',
      'prlsrvctl net set Shared --nat-tcp-add bridge-demo-ssh,40022,bridge-demo,22',
      'prlsrvctl net set Shared --nat-tcp-add bridge-demo-smb,40445,bridge-demo,445',
    ]);
    expect(r.lines().filter((l) => !l.startsWith('prlctl status'))).toEqual([
      ...r.lines().slice(0, 8),
      'prlctl stop bridge-demo --acpi',
      'prlctl stop bridge-demo --kill',
    ]);
  });
});
