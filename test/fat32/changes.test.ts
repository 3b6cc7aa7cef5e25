/**
 * The rule for a source that changes while served: metadata is a snapshot; a file whose size, mtime
 * or inode differs from it reads as EIO (never as torn or mismatched bytes) and is reported.
 */
import { mkdtempSync, rmSync, writeFileSync, appendFileSync, unlinkSync, utimesSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { buildFat32Volume, type Fat32Volume } from '../../appliance/src/fat32/index.js';
import { clusterOffset } from '../../appliance/src/fat32/layout.js';
import { isBridgeError } from '../../shared/src/errors.js';
import { Rng } from '../helpers/random.js';

describe.each(['sync', 'async'] as const)('FAT32 volume: source changes after the snapshot (%s source I/O)', (ioMode) => {
  let dir = '';
  let vol: Fat32Volume;
  const contents = new Map<string, Buffer>();

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-fat32-chg-'));
    const rng = new Rng(3);
    for (const n of ['grow', 'rewrite', 'delete', 'replace', 'same']) {
      const data = rng.bytes(10_000);
      writeFileSync(join(dir, n), data);
      contents.set(n, data);
    }
    vol = await buildFat32Volume(dir, { size: 64 * 1024 * 1024, ioMode });
  });

  afterEach(async () => {
    await vol.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Reads a file's bytes through the device, at its clusters. */
  const readFile = async (name: string): Promise<Buffer> => {
    const e = vol.snapshot.entries.view(vol.snapshot.entries.find(0, name));
    const b = Buffer.alloc(e.size);
    await vol.read(b, clusterOffset(vol.geometry, e.firstCluster));
    return b;
  };
  const eio = async (name: string): Promise<void> => {
    const err = await readFile(name).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isBridgeError(err, 'EIO'), `read of ${name} should fail with EIO`).toBe(true);
  };

  it('serves unchanged files and fails reads of changed ones with EIO, listing them in the report', async () => {
    expect((await readFile('grow')).equals(contents.get('grow')!)).toBe(true); // descriptor now cached
    appendFileSync(join(dir, 'grow'), 'more');
    const rewritten = Buffer.alloc(10_000, 7);
    writeFileSync(join(dir, 'rewrite'), rewritten);
    utimesSync(join(dir, 'rewrite'), new Date(), new Date(Date.now() + 5000));
    unlinkSync(join(dir, 'delete'));
    writeFileSync(join(dir, 'replace.new'), contents.get('replace')!);
    renameSync(join(dir, 'replace.new'), join(dir, 'replace')); // same bytes, another inode
    await eio('grow');
    await eio('rewrite');
    await eio('delete');
    await eio('replace');
    expect((await readFile('same')).equals(contents.get('same')!)).toBe(true);
    const changed = vol.report().changed;
    expect(changed.map((c) => c.path).sort()).toEqual(['delete', 'grow', 'replace', 'rewrite']);
    expect(changed.find((c) => c.path === 'grow')!.detail).toMatch(/size 10000 became 10004/);
    // Metadata stays the snapshot's: the directory still lists the file with its old size.
    const root = vol.directoryBytes(0);
    expect(root.includes(Buffer.from('GROW       ', 'latin1'))).toBe(true);
  });
});
