/**
 * Saved VM states ("templates") on the host, for warm starts (warm-start.ts):
 *
 *   $STATE/templates/           0700
 *     <key>/template.json       which generation is current, and what it was made from
 *     <key>/<generation>/       0700: memory.state (QEMU's migration stream), id_ed25519 (the
 *                               template's SSH key), config.img (its config drive); files 0600
 *
 * <key> hashes everything a saved state depends on (image, QEMU version, accelerator, machine, memory,
 * CPUs, the device list). A generation is written in full before template.json names it (rename), so a
 * reader never sees half a template; two starts creating the same template at once both succeed and
 * the last one wins. The memory file is checked (size, QEMU's magic, SHA-256) before a VM runs from it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { BridgeError, errorMessage } from '../../shared/src/errors.js';
import { stateRoot, writePrivate } from './state.js';

/** Bumped when what a template holds changes meaning (guest protocol, file layout). */
export const TEMPLATE_FORMAT = 1;
/** Templates kept (the most recently used); each is ~200 MB for a 1 GiB guest. */
export const KEEP_TEMPLATES = 3;

export interface TemplateIdentity {
  imageHash: string;
  imageVersion: string;
  qemuVersion: string;
  accel: string;
  memoryMiB: number;
  cpus: number;
  /** The normalized QEMU command line (qemu.ts templateIdentity). */
  devices: string;
}

export interface TemplateMeta extends TemplateIdentity {
  format: number;
  key: string;
  generation: string;
  created: string;
  memoryBytes: number;
  memorySha256: string;
  /** How long saving took (ms), for `bridge image templates`. */
  saveMs: number;
}

export interface Template {
  meta: TemplateMeta;
  dir: string;
  memoryFile: string;
  configDrive: string;
  privateKey: string;
}

/** The files of one generation being written. */
export interface TemplateGeneration {
  key: string;
  generation: string;
  dir: string;
  memoryFile: string;
  configDrive: string;
  keyFile: string;
}

export function templatesRoot(): string {
  return join(stateRoot(), 'templates');
}

export function templateKey(id: TemplateIdentity): string {
  const canonical = JSON.stringify([TEMPLATE_FORMAT, id.imageHash, id.qemuVersion, id.accel, id.memoryMiB, id.cpus, id.devices]);
  return createHash('sha256').update(canonical).digest('hex').slice(0, 32);
}

const FILES = { memory: 'memory.state', key: 'id_ed25519', drive: 'config.img' } as const;
/** QEMU's migration stream starts with "QEVM" and format version 3. */
const QEMU_MAGIC = Buffer.from([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]);

function privateDir(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
}

export function newGeneration(key: string): TemplateGeneration {
  privateDir(templatesRoot());
  const generation = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  const dir = join(templatesRoot(), key, generation);
  privateDir(dir);
  const memoryFile = join(dir, FILES.memory);
  // Made here with its mode: QEMU's `cat >` only truncates it.
  writeFileSync(memoryFile, '', { mode: 0o600 });
  return { key, generation, dir, memoryFile, configDrive: join(dir, FILES.drive), keyFile: join(dir, FILES.key) };
}

export function writeGenerationKey(gen: TemplateGeneration, privateKey: string): void {
  writePrivate(gen.dir, FILES.key, privateKey);
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Makes the generation current: hashes its memory file and names it in template.json. */
export async function commitGeneration(gen: TemplateGeneration, id: TemplateIdentity, saveMs: number): Promise<TemplateMeta> {
  const memoryBytes = statSync(gen.memoryFile).size;
  const meta: TemplateMeta = {
    format: TEMPLATE_FORMAT,
    key: gen.key,
    generation: gen.generation,
    created: new Date().toISOString(),
    ...id,
    memoryBytes,
    memorySha256: await sha256File(gen.memoryFile),
    saveMs,
  };
  const keyDir = join(templatesRoot(), gen.key);
  const tmp = join(keyDir, `template.json.${gen.generation}`);
  writeFileSync(tmp, JSON.stringify(meta, null, 2) + '\n', { mode: 0o600 });
  renameSync(tmp, join(keyDir, 'template.json'));
  // Older generations: a VM being restored from one has it open, which is fine on unlink.
  for (const name of readdirSync(keyDir)) {
    if (name !== gen.generation && name !== 'template.json' && !name.startsWith('template.json.')) rmSync(join(keyDir, name), { recursive: true, force: true });
  }
  pruneTemplates();
  return meta;
}

/** Marks a template used (template.json's mtime orders them for pruning). */
export function touchTemplate(key: string): void {
  const now = new Date();
  try {
    utimesSync(join(templatesRoot(), key, 'template.json'), now, now);
  } catch {
    // removed meanwhile: nothing to mark
  }
}

/** Keeps the `keep` most recently used templates (others are for older images or settings). */
export function pruneTemplates(keep = KEEP_TEMPLATES): string[] {
  const root = templatesRoot();
  if (!existsSync(root)) return [];
  const used = (key: string): number => {
    try {
      return statSync(join(root, key, 'template.json')).mtimeMs;
    } catch {
      return 0;
    }
  };
  const keys = readdirSync(root)
    .filter((k) => existsSync(join(root, k, 'template.json')))
    .sort((a, b) => used(b) - used(a));
  const removed = keys.slice(keep);
  for (const k of removed) removeTemplate(k);
  return removed;
}

export type Lookup = { template: Template } | { problem: string } | undefined;

/** The current template for `key`; a problem (unusable template) is reported, not thrown. */
export function findTemplate(key: string): Lookup {
  const keyDir = join(templatesRoot(), key);
  const metaFile = join(keyDir, 'template.json');
  if (!existsSync(metaFile)) return undefined;
  try {
    const meta = JSON.parse(readFileSync(metaFile, 'utf8')) as TemplateMeta;
    if (meta.format !== TEMPLATE_FORMAT || meta.key !== key)
      return { problem: `${metaFile}: format ${meta.format} / key ${meta.key} is not ${TEMPLATE_FORMAT} / ${key}` };
    const dir = join(keyDir, meta.generation);
    const memoryFile = join(dir, FILES.memory);
    const configDrive = join(dir, FILES.drive);
    for (const f of [memoryFile, configDrive, join(dir, FILES.key)]) if (!existsSync(f)) return { problem: `${f} is missing` };
    const size = statSync(memoryFile).size;
    if (size !== meta.memoryBytes) return { problem: `${memoryFile} has ${size} bytes, expected ${meta.memoryBytes} (truncated or replaced)` };
    return { template: { meta, dir, memoryFile, configDrive, privateKey: readFileSync(join(dir, FILES.key), 'utf8') } };
  } catch (e) {
    return { problem: `${metaFile}: ${errorMessage(e)}` };
  }
}

/** Checks that the memory file is what was saved: QEMU's magic first (cheap), then its SHA-256. */
export async function verifyTemplate(t: Template): Promise<void> {
  const fh = await open(t.memoryFile, 'r');
  try {
    const head = Buffer.alloc(QEMU_MAGIC.length);
    await fh.read(head, 0, head.length, 0);
    if (!head.equals(QEMU_MAGIC)) throw new BridgeError('EIO', `${t.memoryFile} is not a QEMU state file (bad magic)`);
  } finally {
    await fh.close();
  }
  const digest = await sha256File(t.memoryFile);
  if (digest !== t.meta.memorySha256)
    throw new BridgeError('EIO', `${t.memoryFile} is corrupt (SHA-256 ${digest.slice(0, 12)}…, expected ${t.meta.memorySha256.slice(0, 12)}…)`);
}

export function removeTemplate(key: string): void {
  rmSync(join(templatesRoot(), key), { recursive: true, force: true });
}

export interface TemplateListing {
  key: string;
  dir: string;
  meta?: TemplateMeta;
  problem?: string;
  bytes: number;
}

function duBytes(path: string): number {
  let total = 0;
  for (const name of readdirSync(path)) {
    const p = join(path, name);
    const st = statSync(p);
    total += st.isDirectory() ? duBytes(p) : st.size;
  }
  return total;
}

export function listTemplates(): TemplateListing[] {
  const root = templatesRoot();
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .sort()
    .map((key) => {
      const found = findTemplate(key);
      return {
        key,
        dir: join(root, key),
        ...(found && 'template' in found ? { meta: found.template.meta } : {}),
        ...(found && 'problem' in found ? { problem: found.problem } : found ? {} : { problem: 'no template.json (being created, or abandoned)' }),
        bytes: duBytes(join(root, key)),
      };
    });
}

/** Removes every template; returns how many and their bytes. */
export function clearTemplates(): { removed: number; bytes: number } {
  const all = listTemplates();
  for (const t of all) removeTemplate(t.key);
  return { removed: all.length, bytes: all.reduce((n, t) => n + t.bytes, 0) };
}
