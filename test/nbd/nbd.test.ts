/**
 * The NBD export checked with clients we did not write: nbdinfo (export info, --map), nbdcopy,
 * qemu-img convert, qemu-io (writes, write-zeroes, discard, flush), nbdsh (libnbd's Python shell,
 * for the errors the server returns to bad requests), and a FAT32 volume over NBD read back with
 * mtools and fsck.fat. The CLI tests need `npm run build` first.
 */
import { mkdtempSync, promises as fsp, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryBlockDevice } from '../../appliance/src/block/memory.js';
import { NbdServer } from '../../appliance/src/nbd/server.js';
import { BridgeError } from '../../shared/src/errors.js';
import { expectVolumeHolds, fsckPartition, fsckProblems, makeMixedTree, run, type MixedTree } from '../fat32/helpers.js';
import { AGENT_CLI, startAgent, stopAgent, type Running } from '../helpers/agent.js';
import { freePort } from '../helpers/ports.js';
import { Rng } from '../helpers/random.js';

const MIB = 1024 * 1024;
// nbdsh is `python3 -m nbd`; run it with Debian's python3 (python3-libnbd), whatever python3 comes first on PATH.
const PYTHON = '/usr/bin/python3';
const NBDSH = '-mnbd';
const unixUri = (sock: string): string => `nbd+unix:///?socket=${sock}`;

async function ok(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

interface MapEntry {
  offset: number;
  length: number;
  type: number;
}
async function nbdMap(uri: string): Promise<MapEntry[]> {
  return JSON.parse(await ok('nbdinfo', ['--map', '--json', uri])) as MapEntry[];
}

function readyJson(r: Running): Record<string, unknown> {
  const out = r.output();
  return JSON.parse(out.slice(out.indexOf('{'), out.lastIndexOf('}') + 1)) as Record<string, unknown>;
}

describe('expose --nbd: a memory device over a Unix socket', () => {
  let dir = '';
  let sock = '';
  let agent: Running;
  const size = 64 * MIB;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-nbd-'));
    sock = join(dir, 'mem.sock');
    agent = await startAgent(['--log-level', 'warn', 'expose', '--device', `memory:${size}`, '--nbd', sock, '--json'], /"writable"/);
  });

  afterAll(async () => {
    if (agent.child.exitCode === null) await stopAgent(agent);
    rmSync(dir, { recursive: true, force: true });
  });

  it('prints the NBD URI and makes the socket owner-only', async () => {
    const ready = readyJson(agent);
    expect(ready.nbd).toBe(unixUri(sock));
    expect(ready.file).toBeUndefined();
    expect((await fsp.stat(sock)).mode & 0o777).toBe(0o600);
  });

  it('nbdinfo shows the size, the flags and base:allocation', async () => {
    const info = JSON.parse(await ok('nbdinfo', ['--json', unixUri(sock)])) as {
      protocol: string;
      exports: Record<string, unknown>[];
    };
    expect(info.protocol).toBe('newstyle-fixed');
    const e = info.exports[0]!;
    expect(e['export-size']).toBe(size);
    expect(e.is_read_only).toBe(false);
    for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn', 'can_df']) expect(e[k], k).toBe(true);
    expect(e.contexts).toContain('base:allocation');
    expect(e.block_size_maximum).toBe(32 * MIB);
  });

  it('qemu-io writes, zeroes, discards and flushes; qemu-img convert and nbdinfo --map agree', async () => {
    const uri = unixUri(sock);
    await ok('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 1M 3M', '-c', 'write -P 0x11 12345 777', '-c', 'write -P 0x22 9M 2M', '-c', 'flush', uri]);
    await ok('qemu-io', ['-f', 'raw', '-c', 'write -z 10M 64K', '-c', 'discard 9M 1M', '-c', 'flush', uri]);
    const expected = Buffer.alloc(size);
    expected.fill(0xab, MIB, 4 * MIB);
    expected.fill(0x11, 12345, 12345 + 777);
    expected.fill(0x22, 10 * MIB, 11 * MIB);
    expected.fill(0, 10 * MIB, 10 * MIB + 64 * 1024);
    const raw = join(dir, 'out.raw');
    await ok('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, raw]);
    expect(readFileSync(raw).equals(expected)).toBe(true);
    // 1 MiB pages: pages 0-3 and 10 hold data; the discarded page 9 is a hole again.
    const map = await nbdMap(uri);
    expect(map.map((m) => [m.offset, m.length, m.type])).toEqual([
      [0, 4 * MIB, 0],
      [4 * MIB, 6 * MIB, 3],
      [10 * MIB, MIB, 0],
      [11 * MIB, size - 11 * MIB, 3],
    ]);
  });

  it('nbdcopy writes a file in and reads it back identical', async () => {
    const rng = new Rng(5);
    const src = join(dir, 'src.bin');
    await fsp.writeFile(src, rng.bytes(size));
    await ok('nbdcopy', [src, unixUri(sock)]);
    const back = join(dir, 'back.bin');
    await ok('nbdcopy', [unixUri(sock), back]);
    expect(readFileSync(back).equals(readFileSync(src))).toBe(true);
  });

  it('stops on SIGTERM, exit code 0, socket removed', async () => {
    expect(await stopAgent(agent)).toBe(0);
    expect(existsSync(sock)).toBe(false);
  });
});

describe('expose: NBD and the FUSE file at once, TCP on loopback only', () => {
  let dir = '';
  let agent: Running | undefined;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-nbd-'));
  });
  afterAll(async () => {
    if (agent && agent.child.exitCode === null) await stopAgent(agent);
    rmSync(dir, { recursive: true, force: true });
  });

  it('a write over NBD (TCP 127.0.0.1) reads back through MOUNTPOINT/disk.img', async () => {
    const port = await freePort();
    const mnt = join(dir, 'mnt');
    agent = await startAgent(['--log-level', 'warn', 'expose', '--device', 'memory:32M', '--nbd', `127.0.0.1:${port}`, '--json', mnt], /"writable"/);
    const ready = readyJson(agent);
    expect(ready.nbd).toBe(`nbd://127.0.0.1:${port}/`);
    expect(ready.file).toBe(join(mnt, 'disk.img'));
    await ok('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 3M 100K', '-c', 'flush', `nbd://127.0.0.1:${port}`]);
    const fh = await fsp.open(join(mnt, 'disk.img'), 'r');
    try {
      const b = Buffer.alloc(100 * 1024);
      await fh.read(b, 0, b.length, 3 * MIB);
      expect(b.every((x) => x === 0x5c)).toBe(true);
    } finally {
      await fh.close();
    }
    expect(await stopAgent(agent)).toBe(0);
  });

  it('refuses a TCP address that is not loopback, naming it', async () => {
    const r = await run(process.execPath, [AGENT_CLI, 'expose', '--device', 'memory:32M', '--nbd', '0.0.0.0:10809']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/0\.0\.0\.0 is not a loopback address/);
  });

  it('refuses to start with neither a mountpoint nor --nbd', async () => {
    const r = await run(process.execPath, [AGENT_CLI, 'expose', '--device', 'memory:32M']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/MOUNTPOINT.*--nbd/);
  });
});

/** A memory device whose second MiB fails every read with EIO (a corrupt chunk, a changed source file). */
class FaultyDevice extends MemoryBlockDevice {
  override async read(target: Uint8Array, offset: number): Promise<void> {
    if (offset < 2 * MIB && offset + target.length > MIB) throw new BridgeError('EIO', 'injected read failure');
    return super.read(target, offset);
  }
}

describe('errors the server returns (nbdsh, client-side checks off)', () => {
  let dir = '';
  const servers: NbdServer[] = [];
  const size = 8 * MIB;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-nbd-'));
    servers.push(await NbdServer.listen(new FaultyDevice(size), { address: join(dir, 'rw.sock'), name: 'disk', description: 'test disk' }));
    servers.push(await NbdServer.listen(new MemoryBlockDevice(size), { address: join(dir, 'ro.sock'), readOnly: true }));
  });
  afterAll(async () => {
    for (const s of servers) await s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const script = (sock: string, structured: boolean): string => `
import errno, json, nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.set_request_structured_replies(${structured ? 'True' : 'False'})
h.add_meta_context("base:allocation")
h.connect_uri("nbd+unix:///?socket=${sock}")
def code(f):
    try:
        f()
        return "ok"
    except nbd.Error as e:
        return errno.errorcode.get(e.errno, str(e.errno))
size = h.get_size()
out = {
  "structured": h.get_structured_replies_negotiated(),
  "read_past_end": code(lambda: h.pread(2, size - 1)),
  "read_far_past_end": code(lambda: h.pread(512, 2**40)),
  "read_failing": code(lambda: h.pread(4096, 1024 * 1024 + 4096)),
  "read_fine": code(lambda: h.pread(4096, 0)),
  "write": code(lambda: h.pwrite(b"x" * 10, 100)),
  "write_past_end": code(lambda: h.pwrite(b"x" * 10, size - 5)),
  "zero_past_end": code(lambda: h.zero(4096, size)),
  "trim_past_end": code(lambda: h.trim(4096, size)),
  "flush": code(lambda: h.flush()),
}
h.shutdown()
print(json.dumps(out))
`;

  for (const structured of [true, false]) {
    it(`writable export, ${structured ? 'structured' : 'simple'} replies: EINVAL, ENOSPC and EIO where due`, async () => {
      const r = JSON.parse(await ok(PYTHON, [NBDSH, '-c', script(join(dir, 'rw.sock'), structured).replace('nbd+unix:///?', 'nbd+unix:///disk?')])) as Record<
        string,
        unknown
      >;
      expect(r).toMatchObject({
        structured,
        read_past_end: 'EINVAL',
        read_far_past_end: 'EINVAL',
        read_failing: 'EIO',
        read_fine: 'ok',
        write: 'ok',
        write_past_end: 'ENOSPC',
        zero_past_end: 'ENOSPC',
        trim_past_end: 'EINVAL',
        flush: 'ok',
      });
    });
  }

  it('read-only export: writes, zeroes and trims fail with EPERM', async () => {
    const r = JSON.parse(await ok(PYTHON, [NBDSH, '-c', script(join(dir, 'ro.sock'), true)])) as Record<string, unknown>;
    expect(r).toMatchObject({ read_fine: 'ok', write: 'EPERM', flush: 'ok' });
  });

  it('lists the export, and refuses an unknown export name', async () => {
    const list = await ok('nbdinfo', ['--list', '--json', unixUri(join(dir, 'rw.sock'))]);
    const exports = (JSON.parse(list) as { exports: { 'export-name': string; description?: string }[] }).exports;
    expect(exports.map((e) => [e['export-name'], e.description])).toEqual([['disk', 'test disk']]);
    const r = await run('nbdinfo', [`nbd+unix:///other?socket=${join(dir, 'rw.sock')}`]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/No such file or directory for export: other/);
  });
});

describe('fat32 serve --nbd: the synthesized disk over NBD only', () => {
  let dir = '';
  let src = '';
  let sock = '';
  let tree: MixedTree;
  let agent: Running;
  const size = 256 * MIB;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-nbd-fat32-'));
    src = join(dir, 'src');
    sock = join(dir, 'fat.sock');
    await fsp.mkdir(src);
    tree = await makeMixedTree(src, 2048, 41);
    agent = await startAgent(['--log-level', 'warn', 'fat32', 'serve', '--source', src, '--read-only', '--size', '256M', '--nbd', sock, '--json'], /"report"/);
  });
  afterAll(async () => {
    if (agent.child.exitCode === null) await stopAgent(agent);
    rmSync(dir, { recursive: true, force: true });
  });

  it('is read-only, and nbdinfo --map shows the free clusters as holes', async () => {
    const info = JSON.parse(await ok('nbdinfo', ['--json', unixUri(sock)])) as { exports: Record<string, unknown>[] };
    expect(info.exports[0]).toMatchObject({ 'export-size': size, is_read_only: true, can_multi_conn: true });
    const map = await nbdMap(unixUri(sock));
    const holes = map.filter((m) => m.type === 3).reduce((n, m) => n + m.length, 0);
    // The tree holds about 20 MB; most of the 256 MiB is free.
    expect(holes).toBeGreaterThan(200 * MIB);
    expect(map[0]).toMatchObject({ offset: 0, length: 512, type: 0 }); // the MBR, then the gap to 1 MiB
    expect(map[1]).toMatchObject({ offset: 512, type: 3 });
  });

  it('qemu-img convert and nbdcopy produce the same image; fsck.fat and mtools find every file', async () => {
    const raw = join(dir, 'qemu.raw');
    await ok('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', unixUri(sock), raw]);
    const copy = join(dir, 'nbdcopy.raw');
    await ok('nbdcopy', [unixUri(sock), copy]);
    expect(readFileSync(copy).equals(readFileSync(raw))).toBe(true);
    const f = await fsckPartition(raw, size - MIB);
    expect(fsckProblems(f.output), f.output).toEqual([]);
    expect(f.code).toBe(0);
    await expectVolumeHolds(raw, join(dir, 'out'), tree);
  });

  it('a source file changed after the snapshot reads as EIO over NBD', async () => {
    const victim = [...tree.expected].find(([p, c]) => c !== 'dir' && !p.includes('/') && c.length > 100_000)![0];
    await fsp.appendFile(join(src, victim), 'more');
    // A whole-device copy reaches the file's clusters: the copy must fail, not hand out other bytes.
    const read = await run('nbdcopy', [unixUri(sock), join(dir, 'after.raw')]);
    expect(read.code).not.toBe(0);
    expect(read.stderr).toMatch(/Input\/output error|EIO/);
  });
});
