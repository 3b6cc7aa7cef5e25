/**
 * The bootable disk as other hypervisors use it: no -kernel, BIOS → MBR → syslinux → kernel, and the
 * config drive on an IDE controller without a serial (found by its magic line after bridge-init loads
 * the non-virtio disk drivers). SSH login with the config-drive key proves the whole path.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootAppliance, buildImage, waitForSsh, type ApplianceVm, type BuiltImage } from './appliance-vm.js';

let image: BuiltImage;
let vm: ApplianceVm;

beforeAll(async () => {
  image = await buildImage();
  vm = await bootAppliance(image, { boot: 'disk', configDriveBus: 'ide' });
}, 20 * 60_000);

afterAll(async () => {
  await vm?.close();
}, 60_000);

describe('appliance disk boot', () => {
  it('boots from the MBR disk with syslinux and reads a serial-less config drive', async () => {
    const r = await waitForSsh(vm, 'cat /etc/bridge-image-version; cat /run/bridge/guest.json; cat /proc/cmdline', 240_000);
    const [version, guestJson, cmdline] = r.stdout.trim().split('\n');
    expect(version).toBe(image.manifest.version);
    expect(JSON.parse(guestJson!)).toMatchObject({ name: 'bridge-test', configDrive: expect.stringMatching(/^\/dev\/sd[a-z]$/) });
    expect(cmdline).toContain(image.manifest.cmdline); // came from syslinux.cfg, not from QEMU
    expect(cmdline).toContain('console=tty0');
  }, 300_000);
});
