/** waitForAgent's errors: they must say what happened and show the guest console's last lines. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BootStalled, consoleTail, retryStalledBoot, waitForAgent } from '../../wrapper/src/agent-client.js';
import { generateEd25519 } from '../../wrapper/src/keys.js';
import { freePort } from '../helpers/ports.js';

const dir = mkdtempSync(join(tmpdir(), 'bridge-wait-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const key = generateEd25519('agent-wait-test').private;

describe('waiting for the agent', () => {
  it('fails fast when the VM exits, with the console tail', async () => {
    const log = join(dir, 'console.log');
    writeFileSync(log, Array.from({ length: 40 }, (_, i) => `line ${i}\r`).join('\n') + '\nKernel panic - not syncing: VFS\n');
    const port = await freePort();
    const err = await waitForAgent({
      target: { host: '127.0.0.1', port, user: 'root', privateKey: key },
      timeoutMs: 30_000,
      consoleLog: log,
      alive: async () => false,
    }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/the VM exited while booting/);
    expect((err as Error).message).toMatch(/Kernel panic - not syncing: VFS/);
    expect((err as Error).message).not.toMatch(/line 5\b/); // only the tail
  });

  it('times out with the last error and the console tail when nothing answers', async () => {
    const log = join(dir, 'quiet.log');
    writeFileSync(log, 'bridge-init: waiting for the network\n');
    const port = await freePort();
    const t0 = Date.now();
    const err = await waitForAgent({
      target: { host: '127.0.0.1', port, user: 'root', privateKey: key },
      timeoutMs: 1500,
      consoleLog: log,
      alive: async () => true,
    }).catch((e: Error) => e);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect((err as Error).message).toMatch(/did not answer within 2 s \(last: .*ECONNREFUSED/);
    expect((err as Error).message).toMatch(/bridge-init: waiting for the network/);
    expect(consoleTail(join(dir, 'missing.log'))).toBe('(no console log)');
  });

  it('gives up early on a VM whose console shows nothing of the appliance, and boots it once more', async () => {
    const log = join(dir, 'empty.log');
    writeFileSync(log, '');
    const port = await freePort();
    const wait = (): Promise<unknown> =>
      waitForAgent({
        target: { host: '127.0.0.1', port, user: 'root', privateKey: key },
        timeoutMs: 30_000,
        consoleLog: log,
        alive: async () => true,
        stallMs: 300,
      });
    const err = await wait().catch((e: Error) => e);
    expect(err).toBeInstanceOf(BootStalled);
    expect((err as Error).message).toMatch(/printed nothing of the appliance on its console within 0 s/);
    // A console with the initramfs's first line is alive: no early give-up, the normal timeout.
    writeFileSync(log, 'bridge-initramfs: start\n');
    const slow = await waitForAgent({
      target: { host: '127.0.0.1', port, user: 'root', privateKey: key },
      timeoutMs: 1500,
      consoleLog: log,
      alive: async () => true,
      stallMs: 300,
    }).catch((e: Error) => e);
    expect(slow).not.toBeInstanceOf(BootStalled);
    const calls: string[] = [];
    let n = 0;
    const result = await retryStalledBoot(
      async () => {
        calls.push('boot');
        if (n++ === 0) throw new BootStalled('EIO', 'stuck');
        return 'up';
      },
      async () => void calls.push('stop'),
    );
    expect(result).toBe('up');
    expect(calls).toEqual(['boot', 'stop', 'boot']);
    await expect(
      retryStalledBoot(
        async () => Promise.reject(new Error('other')),
        async () => undefined,
      ),
    ).rejects.toThrow('other');
  });
});
