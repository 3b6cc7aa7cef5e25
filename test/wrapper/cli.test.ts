/** The CLI's argument validation and the commands that need no VM, through the real `bridge` entry point. */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { bridge } from './e2e-helpers.js';

const root = mkdtempSync(join(tmpdir(), 'bridge-cli-'));
const env = { ...process.env, BRIDGE_STATE_DIR: join(root, 'state'), BRIDGE_CONFIG_DIR: join(root, 'config'), BRIDGE_IMAGE_MANIFEST: join(root, 'none.json') };
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('bridge CLI', () => {
  it('refuses bad arguments with exit code 2 and a message naming the input', async () => {
    const cases: [string[], RegExp][] = [
      [['start', '--export', 'smb,afp'], /--export: unknown protocol "afp"/],
      [['start', '--source', 'floppy:/x'], /unknown kind "floppy"/],
      [['start', '--name', 'Bad_Name'], /--name: "Bad_Name"/],
      [['start', '--fat32'], /add iscsi to --export/],
      [['config', 'set', 'colour', 'blue'], /unknown key "colour"/],
    ];
    for (const [args, msg] of cases) {
      const r = await bridge(args, env, 60_000);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(msg);
    }
    const missing = await bridge(['start', '--source', 'disk:/nonexistent.img'], env, 60_000);
    expect(missing.code).toBe(1); // a missing file is not a usage error
    expect(missing.stderr).toMatch(/\/nonexistent.img does not exist/);
    const hv = await bridge(['start', '--hypervisor', 'xen'], env, 60_000);
    expect(hv.code).not.toBe(0);
    expect(hv.stderr).toMatch(/xen/);
  });

  it('reports no instances, a missing instance, and a missing image clearly', async () => {
    const st = await bridge(['status', '--json'], env);
    expect(st.code).toBe(0);
    expect(JSON.parse(st.stdout)).toEqual([]);
    const stop = await bridge(['stop', 'nosuch'], env);
    expect(stop.code).toBe(1);
    expect(stop.stderr).toMatch(/no instance named "nosuch"/);
    const start = await bridge(['start', '--json', '--accel', 'tcg'], env);
    expect(start.code).toBe(1);
    expect(JSON.parse(start.stdout).error.message).toMatch(/none.json does not exist/);
  });

  it('lists and clears saved templates', async () => {
    const empty = await bridge(['image', 'templates'], env);
    expect(empty.code, empty.stderr).toBe(0);
    expect(empty.stdout).toMatch(/no templates in .*templates \(the next bridge start makes one\)/);
    // A leftover generation without template.json (a start killed while saving) is listed as unusable.
    mkdirSync(join(root, 'state', 'templates', 'deadbeef', 'gen'), { recursive: true });
    writeFileSync(join(root, 'state', 'templates', 'deadbeef', 'gen', 'memory.state'), Buffer.alloc(1000));
    const list = JSON.parse((await bridge(['image', 'templates', '--json'], env)).stdout) as { key: string; problem?: string; bytes: number }[];
    expect(list).toMatchObject([{ key: 'deadbeef', problem: expect.stringMatching(/no template.json/), bytes: 1000 }]);
    const cleared = await bridge(['image', 'templates', '--clear', '--json'], env);
    expect(JSON.parse(cleared.stdout)).toEqual({ removed: 1, bytes: 1000 });
    expect(existsSync(join(root, 'state', 'templates', 'deadbeef'))).toBe(false);
  });

  it('prints the hypervisor report as JSON', async () => {
    const r = await bridge(['hypervisors', '--json', '--accel', 'tcg'], env);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as { choice: string; hypervisors: { name: string; available: boolean; acceleration?: string }[] };
    expect(report.hypervisors.map((h) => h.name)).toEqual(['qemu', 'virtualbox', 'vmware', 'hyperv', 'parallels']);
    expect(report.hypervisors[0]).toMatchObject({ name: 'qemu', available: true, acceleration: 'tcg' });
    expect(report.choice).toBe('qemu');
  });
});
