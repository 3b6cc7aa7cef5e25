/** Shared by the end-to-end tests and the start benchmark: run the real `bridge` CLI with private state. */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The appliance manifest to boot: BRIDGE_IMAGE_MANIFEST, else the image cache's `current`. */
export function findManifest(): string | undefined {
  const explicit = process.env.BRIDGE_IMAGE_MANIFEST;
  if (explicit) return existsSync(explicit) ? explicit : undefined;
  const cached = join(process.env.BRIDGE_IMAGE_CACHE || '/var/cache/bridge/images', 'current', 'manifest.json');
  return existsSync(cached) ? cached : undefined;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function makeEnv(manifest: string): NodeJS.ProcessEnv {
  const root = mkdtempSync(join(tmpdir(), 'bridge-e2e-'));
  return {
    ...process.env,
    BRIDGE_STATE_DIR: join(root, 'state'),
    BRIDGE_CONFIG_DIR: join(root, 'config'),
    BRIDGE_IMAGE_MANIFEST: manifest,
    BRIDGE_QEMU_ACCEL: 'tcg',
    E2E_ROOT: root,
  };
}

/** Runs `bridge ARGS` from the sources (tsx), so the tests need no build step. */
export function bridge(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 300_000): Promise<CliResult> {
  return run(join(repo, 'node_modules', '.bin', 'tsx'), [join(repo, 'wrapper', 'src', 'cli.ts'), ...args], env, timeoutMs);
}

/** The built CLI (what `npx bridge` runs), for benchmarks: tsx would add its compile time to each call. */
export const builtCli = join(repo, 'dist', 'wrapper', 'src', 'cli.js');

export function bridgeBuilt(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 300_000): Promise<CliResult> {
  if (!existsSync(builtCli)) throw new Error(`${builtCli} is missing: npm run build first`);
  return run(process.execPath, [builtCli, ...args], env, timeoutMs);
}

export function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env, timeoutMs = 120_000): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code: code ?? 1, stdout, stderr });
    });
  });
}
