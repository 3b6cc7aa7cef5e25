/**
 * The one way the wrapper runs host programs. Backends and mount helpers take a CommandRunner so unit
 * tests can replace it with a recorder and check the exact command lines (the VirtualBox, VMware,
 * Hyper-V and Parallels backends cannot run on this machine). Secrets never go in `args`: pass them
 * through `input` (stdin) or a 0600 file.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { BridgeError } from '../../shared/src/errors.js';
import { logger } from '../../shared/src/logger.js';

export interface RunOptions {
  /** Written to stdin, then stdin is closed. */
  input?: string | Buffer;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  /** Throw on a non-zero exit (default true). */
  check?: boolean;
  /** Streamed output, e.g. for qemu-img's progress. */
  onStdout?: (chunk: string) => void;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface CommandRunner {
  readonly platform: NodeJS.Platform;
  run(cmd: string, args: string[], opts?: RunOptions): Promise<RunResult>;
  /** The absolute path of a program on PATH, or undefined. */
  which(cmd: string): string | undefined;
}

const log = logger().child({ component: 'runner' });

/** The last lines of a program's output, for error messages. */
export function tail(text: string, lines = 15): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

export class HostRunner implements CommandRunner {
  readonly platform = process.platform;

  which(cmd: string): string | undefined {
    if (cmd.includes('/')) return cmd;
    const exts = this.platform === 'win32' ? ['.exe', '.cmd', ''] : [''];
    for (const dir of (process.env.PATH ?? '').split(delimiter)) {
      for (const ext of exts) {
        const p = join(dir, cmd + ext);
        try {
          accessSync(p, constants.X_OK);
          return p;
        } catch {
          // not here
        }
      }
    }
    return undefined;
  }

  run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
    log.debug('run', { cmd, args: args.join(' ') });
    return new Promise((resolve, reject) => {
      const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      let timedOut = false;
      const timer = opts.timeoutMs
        ? setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, opts.timeoutMs)
        : undefined;
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        stdout += d;
        opts.onStdout?.(d);
      });
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      child.stdin.on('error', () => undefined);
      child.stdin.end(opts.input ?? '');
      child.on('error', (e) => {
        if (timer) clearTimeout(timer);
        reject(new BridgeError('ENOENT', `cannot run ${cmd}: ${e.message}`));
      });
      child.on('close', (code, signal) => {
        if (timer) clearTimeout(timer);
        const result = { code: code ?? (signal ? 128 : 1), stdout, stderr };
        if (timedOut) return reject(new BridgeError('EIO', `${cmd} ${args.join(' ')} did not finish within ${opts.timeoutMs} ms`));
        if (result.code !== 0 && opts.check !== false) {
          return reject(new BridgeError('EIO', `${cmd} ${args.join(' ')} failed (exit ${result.code}): ${tail(stderr || stdout, 8)}`));
        }
        resolve(result);
      });
    });
  }
}

export const hostRunner = new HostRunner();
