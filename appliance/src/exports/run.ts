/**
 * Runs the server tools (smbpasswd, tgtadm, losetup, mount ...) as child processes. Never blocks the
 * event loop: the agent serves FUSE files that these very tools may touch. Secrets go on stdin only,
 * never in arguments (which any local user can read from /proc).
 */
import { execFile, spawn } from 'node:child_process';
import { BridgeError } from '../../../shared/src/errors.js';

export interface RunOptions {
  /** Written to the tool's stdin (then closed). */
  input?: string;
  /** Kill after this many ms (default 60 s). */
  timeoutMs?: number;
  /** Error code to throw on failure (default EIO). */
  code?: 'EIO' | 'EINVAL' | 'EACCES' | 'EBUSY' | 'ENOENT';
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

/** Runs `cmd args`; throws a BridgeError naming the command and its stderr when it fails. */
export function run(cmd: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: options.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) {
        const detail = (stderr || stdout || err.message).trim().split('\n').slice(-3).join(' / ');
        reject(new BridgeError(options.code ?? 'EIO', `${cmd} ${args[0] ?? ''} failed: ${detail}`, { command: cmd }, { cause: err }));
      } else resolve({ stdout, stderr });
    });
    // A tool that exits without reading its stdin must not become an uncaught EPIPE.
    child.stdin?.on('error', () => undefined);
    if (options.input !== undefined) child.stdin?.end(options.input);
    else child.stdin?.end();
  });
}

/** Like run() but never throws: for cleanups that may find nothing to clean. */
export async function tryRun(cmd: string, args: string[], options: RunOptions = {}): Promise<boolean> {
  try {
    await run(cmd, args, options);
    return true;
  } catch {
    return false;
  }
}

/** True when `cmd` can be started (on PATH). */
export function haveCommand(cmd: string): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn(cmd, ['--version'], { stdio: 'ignore' });
    child.on('error', () => resolve(false));
    child.on('exit', () => resolve(true));
  });
}
