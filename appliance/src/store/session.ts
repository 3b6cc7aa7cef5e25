/**
 * Writer sessions: which writer last opened a volume, so that a cache directory can tell whether
 * its contents are still current.
 *
 *   writer.json (in the store)   the session id (= the lock id) of the last writer, written right
 *                                after it took the lock and before it uploads anything.
 *   CACHEDIR/session.json        the session whose data this cache holds; while a new session starts,
 *                                also the one about to begin (`next`), so a crash in between is fine.
 *
 * A cache's journal or its warm contents are the volume's latest state only when no other session
 * wrote the volume since: writer.json names this cache's session (or its `next`).
 */
import { promises as fsp, constants as fsc } from 'node:fs';
import { join } from 'node:path';
import { hostname } from 'node:os';
import type { ObjectBackend } from './backend.js';
import { fsyncPath } from '../durable.js';

export const WRITER_KEY = 'writer.json';
const CACHE_SESSION = 'session.json';

export interface WriterRecord {
  session: string;
  host: string;
  pid: number;
  since: string;
}

export interface CacheSession {
  session?: string;
  next?: string;
  /** The newest manifest version this cache saw (manifest.ts): an older one means a rollback. */
  manifest?: number;
}

export async function readWriter(backend: ObjectBackend): Promise<WriterRecord | undefined> {
  const data = await backend.get(WRITER_KEY);
  return data ? (parse(data.toString('utf8')) as WriterRecord | undefined) : undefined;
}

export async function writeWriter(backend: ObjectBackend, session: string): Promise<void> {
  const rec: WriterRecord = { session, host: hostname(), pid: process.pid, since: new Date().toISOString() };
  await backend.put(WRITER_KEY, Buffer.from(JSON.stringify(rec) + '\n'));
}

export async function readCacheSession(dir: string): Promise<CacheSession> {
  try {
    return (parse(await fsp.readFile(join(dir, CACHE_SESSION), 'utf8')) as CacheSession | undefined) ?? {};
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw e;
  }
}

/** Replaces CACHEDIR/session.json durably (temporary file, fsync, rename, directory fsync). */
export async function writeCacheSession(dir: string, s: CacheSession): Promise<void> {
  const path = join(dir, CACHE_SESSION);
  const tmp = path + '.tmp';
  const fh = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC, 0o600);
  try {
    await fh.writeFile(JSON.stringify(s) + '\n');
    await fh.datasync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, path);
  await fsyncPath(dir);
}

/** True when the volume's last writer is the cache's session (or the one it was starting). */
export function cacheIsCurrent(cache: CacheSession, writer: WriterRecord | undefined): boolean {
  if (!writer) return true; // volumes written before sessions existed
  return writer.session === cache.session || writer.session === cache.next;
}

function parse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
