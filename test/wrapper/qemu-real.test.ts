/**
 * The QEMU backend against the real QEMU of this machine, without the appliance: a blank disk that never
 * boots. Checks the daemonized process and its pid, the host port forwards, the console file, and that
 * stopVm forces a guest that ignores the power button — leaving no process behind.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuBackend } from '../../wrapper/src/hypervisors/qemu.js';
import { allocateForwards } from '../../wrapper/src/ports.js';
import { hostRunner } from '../../wrapper/src/runner.js';

const haveQemu = hostRunner.which('qemu-system-x86_64') !== undefined;
let dir: string;
beforeAll(() => (dir = mkdtempSync(join(tmpdir(), 'bridge-qemu-'))));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.on('connect', () => (s.destroy(), resolve(true)));
    s.on('error', () => resolve(false));
  });
}

describe.skipIf(!haveQemu)('QEMU backend on this host (TCG)', () => {
  it('starts daemonized with forwards, reports running, stops (forced: no OS answers ACPI), leaves nothing', async () => {
    const boot = join(dir, 'blank.raw');
    writeFileSync(boot, Buffer.alloc(1024 * 1024));
    const cfg = join(dir, 'config.img');
    writeFileSync(cfg, Buffer.alloc(1024 * 1024));
    const q = new QemuBackend({ runner: hostRunner, accel: 'tcg', pollMs: 50 });
    const forwards = await allocateForwards(
      [
        { name: 'ssh', guestPort: 22 },
        { name: 'smb', guestPort: 445 },
      ],
      new Set(),
    );
    const spec = {
      name: `test-${process.pid}`,
      dir: join(dir, 'vm'),
      bootDisk: { path: boot, format: 'raw' as const },
      memoryMiB: 64,
      cpus: 1,
      disks: [{ path: cfg, format: 'raw' as const, serial: 'bridge-config', readOnly: true }],
      shares: [],
      forwards,
      accel: 'tcg',
    };
    let ref = await q.createVm(spec);
    ref = await q.startVm(ref, spec);
    try {
      expect(ref.pid).toBeGreaterThan(0);
      expect(await q.isRunning(ref)).toBe(true);
      expect(existsSync(ref.consoleLog)).toBe(true);
      // user-mode networking listens on the host side as soon as QEMU runs
      for (const f of forwards) expect(await canConnect(f.hostPort)).toBe(true);
      expect(await q.reachable(ref, forwards)).toEqual({ address: '127.0.0.1', ports: { ssh: forwards[0]!.hostPort, smb: forwards[1]!.hostPort } });
      // A second VM on the same ports fails at start-up with QEMU's message (the instance code retries with new ports).
      const clash = { ...spec, name: `clash-${process.pid}`, dir: join(dir, 'vm2') };
      await expect(q.startVm(await q.createVm(clash), clash)).rejects.toThrow(/hostfwd|host forwarding|Could not set up/i);
    } finally {
      const t0 = Date.now();
      await q.stopVm(ref, 500);
      expect(Date.now() - t0).toBeLessThan(10_000);
      await q.deleteVm(ref);
    }
    expect(await q.isRunning(ref)).toBe(false);
    // Gone, or a zombie its reaper (PID 1 here is not an init) has not collected yet.
    const stat = existsSync(`/proc/${ref.pid}/stat`) ? readFileSync(`/proc/${ref.pid}/stat`, 'utf8') : '';
    expect(stat === '' || / Z /.test(stat)).toBe(true);
  });
});
