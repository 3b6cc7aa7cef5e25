/**
 * The crash-safe journal of the local cache (`CACHEDIR/journal`). It never holds chunk data: dirty
 * chunk data lives in the cache's slot file, and the journal records which slot holds which chunk.
 *
 *   commit(i, s)  written by flush() after fdatasync of the slot file: chunk i's acknowledged content
 *                 is in slot s (s = -1: chunk i is all zeros). Made durable before flush returns.
 *   clean(i, s)   chunk i was uploaded; the commit no longer matters. Buffered, made durable lazily —
 *                 and always before slot s is given to another chunk (so replay never reads a
 *                 reused slot as chunk i).
 *
 * Writes to a committed slot happen in place, byte for byte as the device was written, so a crash
 * tears only bytes of writes that no flush acknowledged. On open, every commit without a later clean
 * is replayed: the slot's content is uploaded before the volume is used.
 *
 * File: 64-byte header (magic, volume id, chunk size, crc), then 20-byte records
 * [type u8][0 u8][index u48 BE][slot i32 BE][0 u32][crc32 u32 of the first 16 bytes].
 * A torn or corrupt tail ends the replay (those records were never acknowledged).
 */
import { promises as fsp, constants as fsc } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { BridgeError } from '../../../shared/src/errors.js';
import { fsyncPath } from '../durable.js';

const MAGIC = 'BRJ1';
const HEADER = 64;
const RECORD = 20;
const COMMIT = 1;
const CLEAN = 2;

export class Journal {
  private buffered: Buffer[] = [];
  private pos: number;
  private mutex: Promise<void> = Promise.resolve();

  private constructor(
    private readonly path: string,
    private fh: fsp.FileHandle,
    private readonly headerBytes: Buffer,
    pos: number,
  ) {
    this.pos = pos;
  }

  /** Bytes the file holds now (for the cache's size accounting). */
  get size(): number {
    return this.pos;
  }

  /**
   * Opens (or creates) the journal in `dir`; returns the chunks whose acknowledged content is only in
   * the cache (index → slot, slot -1 = zeros). A journal of another volume is refused.
   */
  static async open(dir: string, volumeId: string, chunkSize: number): Promise<{ journal: Journal; pending: Map<number, number> }> {
    const path = join(dir, 'journal');
    const headerBytes = Buffer.alloc(HEADER);
    headerBytes.write(MAGIC, 0, 'latin1');
    Buffer.from(volumeId, 'hex').copy(headerBytes, 4);
    headerBytes.writeUInt32BE(chunkSize, 20);
    headerBytes.writeUInt32BE(crc32(headerBytes.subarray(0, 60)), 60);

    const pending = new Map<number, number>();
    let existing: Buffer | undefined;
    try {
      existing = await fsp.readFile(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    let pos = HEADER;
    if (existing && existing.length >= HEADER) {
      const h = existing.subarray(0, HEADER);
      if (h.toString('latin1', 0, 4) !== MAGIC || crc32(h.subarray(0, 60)) !== h.readUInt32BE(60)) {
        throw new BridgeError(
          'EIO',
          `cache journal ${path} is not a bridge journal or its header is corrupt; move it away to continue (unflushed data in it would be lost)`,
        );
      }
      if (!h.equals(headerBytes)) {
        throw new BridgeError(
          'EBUSY',
          `cache directory ${dir} belongs to volume ${h.subarray(4, 20).toString('hex')} (chunk size ${h.readUInt32BE(20)}), not ${volumeId}: use another --cache-dir`,
        );
      }
      for (; pos + RECORD <= existing.length; pos += RECORD) {
        const r = existing.subarray(pos, pos + RECORD);
        if (crc32(r.subarray(0, 16)) !== r.readUInt32BE(16)) break;
        const index = r.readUIntBE(2, 6);
        const slot = r.readInt32BE(8);
        if (r[0] === COMMIT) {
          pending.set(index, slot);
        } else if (r[0] === CLEAN) {
          if (pending.get(index) === slot) pending.delete(index);
        } else break;
      }
    }
    const fh = await fsp.open(path, fsc.O_RDWR | fsc.O_CREAT, 0o600);
    const j = new Journal(path, fh, headerBytes, pos);
    if (!existing || existing.length < HEADER) {
      await fh.write(headerBytes, 0, HEADER, 0);
      await fh.datasync();
      await fsyncPath(dir);
      j.pos = HEADER;
    }
    return { journal: j, pending };
  }

  commit(index: number, slot: number): void {
    this.buffered.push(record(COMMIT, index, slot));
  }

  clean(index: number, slot: number): void {
    this.buffered.push(record(CLEAN, index, slot));
  }

  get hasBuffered(): boolean {
    return this.buffered.length > 0;
  }

  /** Writes buffered records and fdatasyncs; returns at once when nothing is buffered. */
  sync(): Promise<void> {
    if (this.buffered.length === 0) return this.mutex;
    return this.exclusive(async () => {
      if (this.buffered.length === 0) return;
      const data = Buffer.concat(this.buffered);
      this.buffered = [];
      await this.fh.write(data, 0, data.length, this.pos);
      this.pos += data.length;
      await this.fh.datasync();
    });
  }

  /**
   * Replaces the journal with one holding only `live` commits (compaction; also reset with none).
   * Records buffered before the call are superseded by `live`; later ones go to the new file.
   */
  rewrite(live: Iterable<[index: number, slot: number]>): Promise<void> {
    return this.exclusive(async () => {
      this.buffered = [];
      const recs = [...live].map(([i, s]) => record(COMMIT, i, s));
      const data = Buffer.concat([this.headerBytes, ...recs]);
      const tmp = this.path + '.new';
      const fh = await fsp.open(tmp, fsc.O_RDWR | fsc.O_CREAT | fsc.O_TRUNC, 0o600);
      try {
        await fh.write(data, 0, data.length, 0);
        await fh.datasync();
      } catch (e) {
        await fh.close();
        throw e;
      }
      await fsp.rename(tmp, this.path);
      await fsyncPath(join(this.path, '..'));
      const old = this.fh;
      this.fh = fh;
      this.pos = data.length;
      await old.close();
    });
  }

  async close(): Promise<void> {
    await this.sync();
    await this.exclusive(() => this.fh.close());
  }

  private exclusive(fn: () => Promise<void>): Promise<void> {
    const run = this.mutex.then(fn);
    this.mutex = run.catch(() => undefined);
    return run;
  }
}

function record(type: number, index: number, slot: number): Buffer {
  const r = Buffer.alloc(RECORD);
  r[0] = type;
  r.writeUIntBE(index, 2, 6);
  r.writeInt32BE(slot, 8);
  r.writeUInt32BE(crc32(r.subarray(0, 16)), 16);
  return r;
}
