import { execFile, type ExecFileOptions } from 'node:child_process';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** Runs a command; rejects with its stderr in the message when it fails. */
export async function sh(cmd: string, args: string[], options: ExecFileOptions = {}): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { maxBuffer: 64 * 1024 * 1024, encoding: 'utf8', ...options });
    return stdout as string;
  } catch (e) {
    const err = e as Error & { stderr?: string; stdout?: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${err.stderr ?? ''}${err.stdout ?? ''}`);
  }
}

export async function mounted(path: string): Promise<boolean> {
  const { readFile } = await import('node:fs/promises');
  return (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').some((l) => l.split(' ')[4] === path);
}

export async function dropCaches(): Promise<void> {
  const { writeFile } = await import('node:fs/promises');
  await sh('sync', []);
  await writeFile('/proc/sys/vm/drop_caches', '3').catch(() => undefined);
}
