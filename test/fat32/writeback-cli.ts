/**
 * Shared by the write-back tests: start and stop `bridge-agent fat32 serve` (the built CLI) on a
 * source, compare trees, and the name generator for names mtools keeps as given.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { resolve } from 'node:path';
import { readTree, run } from './helpers.js';

export const CLI = resolve(import.meta.dirname, '../../dist/appliance/src/cli.js');

export interface Served {
  child: ChildProcess;
  exited: Promise<number | null>;
  ready: { file: string; size: number; writable: boolean };
  stderr: () => string;
}

export async function serve(src: string, mnt: string, extra: string[] = []): Promise<Served> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run "npx tsc -b" first`);
  // BRIDGE_WB_DEBUG=1: the agent logs every plan (its stderr is in the failure messages).
  const log = process.env.BRIDGE_WB_DEBUG === '1' ? ['--log-level', 'debug'] : [];
  const child = spawn(process.execPath, [CLI, ...log, 'fat32', 'serve', '--source', src, '--size', '256M', '--json', ...extra, mnt], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const ready = await new Promise<Served['ready']>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`fat32 serve not ready in 30 s:\n${err}`)), 30_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      try {
        const v = JSON.parse(out) as Served['ready'];
        clearTimeout(timer);
        res(v);
      } catch {
        /* not complete yet */
      }
    });
    void exited.then((code) => rej(new Error(`fat32 serve exited with ${code}:\n${err}`)));
  });
  return { child, exited, ready, stderr: () => err };
}

export async function mountedAt(path: string): Promise<boolean> {
  return (await fsp.readFile('/proc/self/mountinfo', 'utf8')).split('\n').some((l) => l.split(' ')[4] === path);
}

/** Stops the server (SIGTERM, or SIGKILL when `kill`), and clears its mount. */
export async function stop(s: Served | undefined, mnt: string, kill = false): Promise<void> {
  if (s && s.child.exitCode === null && s.child.signalCode === null) {
    s.child.kill(kill ? 'SIGKILL' : 'SIGTERM');
    await s.exited;
  }
  if (await mountedAt(mnt)) await run('fusermount', ['-uz', mnt]);
}

/** A source tree as readTree gives it, without the write-back's journal directory (the agent's own). */
export async function sourceTree(dir: string): Promise<Map<string, Buffer | 'dir'>> {
  const t = await readTree(dir);
  for (const k of [...t.keys()]) if (k === '.bridge-fat32' || k.startsWith('.bridge-fat32/')) t.delete(k);
  return t;
}

/** Differences between two trees (paths, kinds, contents; journal directories left out), at most `max`. */
export async function treeDiff(a: string, b: string, max = 10): Promise<string[]> {
  const [ta, tb] = await Promise.all([sourceTree(a), sourceTree(b)]);
  const out: string[] = [];
  for (const [p, v] of ta) {
    const w = tb.get(p);
    if (w === undefined) out.push(`only in ${a}: ${p}`);
    else if (v === 'dir' || w === 'dir') {
      if (v !== w) out.push(`kind differs: ${p}`);
    } else if (!v.equals(w)) out.push(`content differs: ${p} (${v.length} vs ${w.length} bytes)`);
    if (out.length >= max) return out;
  }
  for (const p of tb.keys()) if (!ta.has(p)) out.push(`only in ${b}: ${p}`);
  return out.slice(0, max);
}
