/**
 * Test helper: runs `bridge-agent serve` as a child process (through tsx, from the sources) with a
 * config written to a temp dir, and talks to it with the real client commands.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, promises as fsp, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { AgentConfigInput } from '../../shared/src/config.js';
import type { AgentStatus } from '../../shared/src/protocol.js';

export const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'appliance', 'src', 'cli.ts');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `bridge-agent ARGS` (stdin optional) and returns its exit code and output. */
export function agentCli(args: string[], input?: string, env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((res) => {
    const child = execFile(
      process.execPath,
      ['--import', 'tsx', CLI, ...args],
      { cwd: ROOT, env: { ...process.env, ...env }, timeout: 180_000 },
      (err, stdout, stderr) => res({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input ?? '');
  });
}

/** Runs any command; never throws. */
export function sh(cmd: string, args: string[], input?: string, timeoutMs = 300_000): Promise<CliResult> {
  return new Promise((res) => {
    const child = execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) =>
      res({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0, stdout, stderr }),
    );
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input ?? '');
  });
}

export class AgentProcess {
  proc: ChildProcess | undefined;
  log = '';
  readonly configPath: string;

  constructor(
    readonly dir: string,
    public config: AgentConfigInput,
    private readonly env: NodeJS.ProcessEnv = {},
  ) {
    this.configPath = join(dir, 'agent.json');
  }

  static tempDir(prefix: string): string {
    return mkdtempSync(join(tmpdir(), prefix));
  }

  get runtimeDir(): string {
    return this.config.runtimeDir!;
  }

  writeConfig(): void {
    writeFileSync(this.configPath, JSON.stringify(this.config, null, 2));
  }

  /** Starts the agent and resolves once it printed its "ready"/"started" line. */
  async start(): Promise<void> {
    this.writeConfig();
    this.log = '';
    const proc = spawn(process.execPath, ['--import', 'tsx', CLI, 'serve', '--config', this.configPath], {
      cwd: ROOT,
      env: { ...process.env, ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    proc.stderr!.on('data', (d: Buffer) => (this.log += d.toString()));
    await new Promise<void>((res, rej) => {
      let out = '';
      proc.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        this.log += d.toString();
        if (/bridge-agent (ready|started)/.test(out)) res();
      });
      proc.once('exit', (code) => rej(new Error(`agent exited with ${code} before it was ready:\n${this.log}`)));
    });
  }

  async status(): Promise<AgentStatus> {
    const r = await agentCli(['status', '--json', '--runtime-dir', this.runtimeDir]);
    if (r.code !== 0) throw new Error(`status failed: ${r.stderr}`);
    return JSON.parse(r.stdout) as AgentStatus;
  }

  /** Polls status until `pred` holds (bounded). */
  async waitFor(pred: (s: AgentStatus) => boolean, what: string, ms = 60_000): Promise<AgentStatus> {
    const end = Date.now() + ms;
    let last: AgentStatus | undefined;
    while (Date.now() < end) {
      last = await this.status().catch(() => undefined);
      if (last && pred(last)) return last;
      await new Promise((r) => setTimeout(r, 300));
    }
    throw new Error(`timed out waiting for ${what}; last status: ${JSON.stringify(last)}\nlog:\n${this.log}`);
  }

  /** SIGTERM and wait for exit; returns the exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return proc?.exitCode ?? null;
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    proc.kill(signal);
    return exited;
  }
}

/** Everything an agent with this runtime dir could leave behind: mounts, loop devices, servers. */
export async function leftovers(runtimeDir: string, extraFiles: string[] = []): Promise<string[]> {
  const found: string[] = [];
  const mounts = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  for (const line of mounts.split('\n')) if (line.includes(runtimeDir)) found.push(`mount: ${line}`);
  const loops = await sh('losetup', ['-a']);
  for (const line of loops.stdout.split('\n')) if (line.includes(runtimeDir) || extraFiles.some((f) => line.includes(f))) found.push(`loop: ${line}`);
  for (const pid of await fsp.readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const cmd = await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(runtimeDir) && !cmd.includes('vitest')) found.push(`process ${pid}: ${cmd.replace(/\0/g, ' ')}`);
  }
  return found;
}

/** True when `pid` is gone or a zombie (killed, but its new parent has not reaped it yet). */
export async function processGone(pid: number): Promise<boolean> {
  const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return !stat || / Z /.test(stat.slice(stat.lastIndexOf(')')));
}
