/**
 * The appliance image on the host: built (or reused) by `image-build/build.sh`, described by its
 * manifest.json, converted to a hypervisor's native format once per image hash (cached beside it).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { BridgeError } from '../../shared/src/errors.js';
import { logger } from '../../shared/src/logger.js';
import { tail } from './runner.js';
import type { DiskFormat, HypervisorBackend } from './hypervisors/backend.js';

const log = logger().child({ component: 'image' });

const manifestSchema = z.object({
  version: z.string(),
  hash: z.string(),
  kernel: z.string(),
  initrd: z.string(),
  disk: z.string(),
  cmdline: z.string(),
  /** Optional capabilities of the image, e.g. "9p" when it can mount virtfs shares. */
  features: z.array(z.string()).default([]),
  guest: z.object({ sshUser: z.string(), sshPort: z.number(), smbPort: z.number(), nfsPort: z.number(), iscsiPort: z.number() }),
});

export interface ApplianceImage {
  manifestPath: string;
  dir: string;
  version: string;
  hash: string;
  kernel: string;
  initrd: string;
  /** The bootable raw MBR disk. */
  disk: string;
  cmdline: string;
  features: string[];
  guest: z.infer<typeof manifestSchema>['guest'];
}

/** The repository (or installed package) root: where image-build/ lives. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'image-build', 'build.sh'))) return dir;
    dir = dirname(dir);
  }
  throw new BridgeError('ENOENT', 'cannot find image-build/build.sh above the bridge installation');
}

export function imageCacheDir(): string {
  return process.env.BRIDGE_IMAGE_CACHE || '/var/cache/bridge/images';
}

export function loadManifest(path: string): ApplianceImage {
  if (!existsSync(path)) throw new BridgeError('ENOENT', `appliance manifest ${path} does not exist (build it: bridge image build)`);
  const parsed = manifestSchema.safeParse(JSON.parse(readFileSync(path, 'utf8')));
  if (!parsed.success) throw new BridgeError('CONFIG', `${path}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  const m = parsed.data;
  const dir = dirname(resolve(path));
  const abs = (p: string): string => (isAbsolute(p) ? p : join(dir, p));
  return {
    manifestPath: resolve(path),
    dir,
    version: m.version,
    hash: m.hash,
    kernel: abs(m.kernel),
    initrd: abs(m.initrd),
    disk: abs(m.disk),
    cmdline: m.cmdline,
    features: m.features,
    guest: m.guest,
  };
}

export interface BuildProgress {
  step: number;
  steps: number;
  message: string;
}

/**
 * Builds or reuses the image. BRIDGE_IMAGE_MANIFEST points at a prebuilt manifest and skips the build
 * (CI and tests use it); otherwise build.sh decides from its content hash whether anything changes.
 */
export function ensureImage(onProgress?: (p: BuildProgress) => void): Promise<ApplianceImage> {
  if (process.env.BRIDGE_IMAGE_MANIFEST) return Promise.resolve(loadManifest(process.env.BRIDGE_IMAGE_MANIFEST));
  const script = join(packageRoot(), 'image-build', 'build.sh');
  return new Promise((resolvePromise, reject) => {
    const child = spawn('bash', [script, '--out', imageCacheDir()], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let pending = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      pending += d;
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        const m = /^\[(\d+)\/(\d+)\] (.*)$/.exec(line);
        if (m) onProgress?.({ step: Number(m[1]), steps: Number(m[2]), message: m[3]! });
      }
    });
    child.on('error', (e) => reject(new BridgeError('ENOENT', `cannot run ${script}: ${e.message}`)));
    child.on('close', (code) => {
      if (code !== 0) return reject(new BridgeError('EIO', `building the appliance image failed (exit ${code}):\n${tail(stderr, 20)}`));
      const last = stdout.trim().split('\n').pop() ?? '';
      try {
        resolvePromise(loadManifest(last));
      } catch (e) {
        reject(e);
      }
    });
  });
}

const EXT: Record<DiskFormat, string> = { raw: 'raw', qcow2: 'qcow2', vmdk: 'vmdk', vdi: 'vdi', vhdx: 'vhdx', parallels: 'hdd' };

/** The image's disk in `format`, converted once and kept beside the image (per image hash). */
export async function convertedDisk(
  image: ApplianceImage,
  format: DiskFormat,
  convert: (src: string, dest: string, onProgress?: (p: number) => void) => Promise<void>,
  onProgress?: (percent: number) => void,
): Promise<string> {
  if (format === 'raw') return image.disk;
  const dir = process.env.BRIDGE_CONVERTED_DIR ? join(process.env.BRIDGE_CONVERTED_DIR, image.hash) : join(image.dir, 'converted');
  const dest = join(dir, `appliance.${EXT[format]}`);
  if (existsSync(dest)) return dest;
  mkdirSync(dir, { recursive: true });
  const tmp = `${dest}.partial`;
  log.info('converting the appliance disk', { format, dest });
  await convert(image.disk, tmp, onProgress);
  renameSync(tmp, dest);
  return dest;
}

export function nativeDisk(image: ApplianceImage, backend: HypervisorBackend, onProgress?: (percent: number) => void): Promise<string> {
  return convertedDisk(image, backend.nativeDiskFormat, (s, d, p) => backend.convertImage(s, d, p), onProgress);
}
