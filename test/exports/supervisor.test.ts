/** The supervisor restarts a dying server, gives up after its limit, and stops a live one. */
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryBlockDevice } from '../../appliance/src/block/memory.js';
import { Supervisor } from '../../appliance/src/exports/supervisor.js';
import { BlockFile } from '../../appliance/src/fuse/block-file.js';
import { inheritableDescriptors, withoutDescriptors } from '../../appliance/src/process/inherited-fds.js';
import { Logger } from '../../shared/src/logger.js';

const dir = mkdtempSync(join(tmpdir(), 'bridge-supervisor-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const log = new Logger({ level: 'silent' });

async function until(pred: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('supervisor', () => {
  it('restarts a server that dies, then gives up after maxRestarts within the window', async () => {
    const sup = new Supervisor({
      name: 'flaky',
      command: 'sh',
      args: ['-c', 'echo dying; sleep 0.1; exit 3'],
      pidFile: join(dir, 'flaky.pid'),
      log,
      ready: async () => undefined,
      maxRestarts: 3,
      windowMs: 60_000,
      restartDelayMs: 10,
    });
    await sup.start();
    expect(readFileSync(join(dir, 'flaky.pid'), 'utf8')).toMatch(/^\d+\nsh -c echo dying; sleep 0.1; exit 3\n$/);
    await until(() => sup.health === 'failed');
    expect(sup.restartCount).toBe(3);
    expect(sup.error).toMatch(/exited \(code 3\): dying/);
    await sup.stop();
  });

  it('keeps a healthy server running and stops it with SIGTERM', async () => {
    const sup = new Supervisor({ name: 'sleepy', command: 'sleep', args: ['30'], pidFile: join(dir, 's.pid'), log, ready: async () => undefined });
    await sup.start();
    const pid = sup.pid!;
    expect(sup.health).toBe('ok');
    process.kill(pid, 'SIGKILL');
    await until(() => sup.health === 'ok' && sup.pid !== pid);
    expect(sup.restartCount).toBe(1);
    await sup.stop();
    expect(sup.health).toBe('stopped');
    expect(() => readFileSync(join(dir, 's.pid'))).toThrow();
  });

  it('fails a start whose server exits before it is ready, with its output as the reason', async () => {
    const sup = new Supervisor({
      name: 'broken',
      command: 'sh',
      args: ['-c', 'echo cannot bind >&2; exit 1'],
      pidFile: join(dir, 'b.pid'),
      log,
      ready: () => new Promise(() => undefined),
    });
    await expect(sup.start()).rejects.toThrow(/exited \(code 1\): cannot bind/);
    expect(sup.health).toBe('failed');
  });

  it('starts servers without the FUSE connections the agent holds (fuse-native opens them without close-on-exec)', async () => {
    const fuseFds = (pid: number | 'self'): number[] =>
      readdirSync(`/proc/${pid}/fd`)
        .filter((fd) => {
          try {
            return readlinkSync(`/proc/${pid}/fd/${fd}`) === '/dev/fuse';
          } catch {
            return false;
          }
        })
        .map(Number);
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    const file = await BlockFile.expose(new MemoryBlockDevice(1 << 20), mnt, { log });
    try {
      const held = fuseFds('self');
      expect(held.length).toBeGreaterThan(0);
      expect(inheritableDescriptors()).toEqual(expect.arrayContaining(held));
      const sup = new Supervisor({ name: 'clean', command: 'sleep', args: ['30'], pidFile: join(dir, 'c.pid'), log, ready: async () => undefined });
      await sup.start();
      try {
        // Same pid as spawned (bash execs the server), the server's own command line, and no /dev/fuse.
        await until(() => readFileSync(`/proc/${sup.pid}/cmdline`, 'utf8').split('\0')[0] === 'sleep');
        expect(fuseFds(sup.pid!)).toEqual([]);
      } finally {
        await sup.stop();
      }
    } finally {
      await file.close();
    }
  });

  it('closes descriptors through bash, which takes any descriptor number, and keeps the pid with exec', () => {
    expect(withoutDescriptors('smbd', ['-F'], [])).toEqual({ command: 'smbd', args: ['-F'] });
    expect(withoutDescriptors('smbd', ['-F', 'a b'], [7, 21])).toEqual({
      command: 'bash',
      args: ['-c', 'exec 7<&-; exec 21<&-; exec "$0" "$@"', 'smbd', '-F', 'a b'],
    });
  });
});
