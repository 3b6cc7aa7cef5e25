/**
 * Keeps one export server process (smbd, ganesha.nfsd, tgtd) running: starts it in the foreground as
 * our child, writes its pid file (so a later agent can find a stray one after we were killed),
 * restarts it when it dies unexpectedly — at most `maxRestarts` times within `windowMs`, after which
 * it is "failed" — and stops it on request.
 *
 * States: stopped → starting → running → (crash) → starting ... → failed | stopping → stopped
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import type { Health } from '../../../shared/src/protocol.js';
import { inheritableDescriptors, withoutDescriptors } from '../process/inherited-fds.js';

export interface SupervisorOptions {
  name: string;
  command: string;
  args: string[];
  /** Where we record the child's pid (and how leftovers are found after a crash of the agent). */
  pidFile: string;
  log: Logger;
  /** Resolves once the server accepts work (port open, targets configured); throwing counts as a failed start. */
  ready: (pid: number) => Promise<void>;
  /** Stops the server cleanly before the signal (tgtd needs its targets deleted first). */
  beforeStop?: () => Promise<void>;
  /** At most this many restarts within windowMs (default 5 in 60 s), then "failed". */
  maxRestarts?: number;
  windowMs?: number;
  restartDelayMs?: number;
}

export class Supervisor {
  private child: ChildProcess | undefined;
  private state: Health = 'stopped';
  private lastError: string | undefined;
  private restarts: number[] = [];
  private stopping = false;
  private readonly log: Logger;
  /** Total restarts since start, for status. */
  restartCount = 0;

  constructor(private readonly o: SupervisorOptions) {
    this.log = o.log.child({ server: o.name });
  }

  get health(): Health {
    return this.state;
  }
  get error(): string | undefined {
    return this.lastError;
  }
  get pid(): number | undefined {
    return this.child?.pid;
  }

  async start(): Promise<void> {
    this.stopping = false;
    this.state = 'starting';
    // Its own process group: smbd signals its whole group when it stops (kill(0, SIGTERM)), which
    // must not reach the agent or whoever started it; and a terminal's Ctrl-C reaches only the agent,
    // which stops the servers in order.
    // Without the descriptors a child would inherit (FUSE connections: see inherited-fds.ts).
    const run = withoutDescriptors(this.o.command, this.o.args, inheritableDescriptors());
    const child = spawn(run.command, run.args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    this.child = child;
    const tail: string[] = [];
    const collect = (chunk: Buffer): void => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line.trim()) continue;
        tail.push(line);
        if (tail.length > 20) tail.shift();
        this.log.debug(line.trim());
      }
    };
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    const exited = new Promise<string>((resolve) => {
      child.once('error', (e) => resolve(`cannot start ${this.o.command}: ${e.message}`));
      child.once('exit', (code, signal) => resolve(`${this.o.command} exited (${signal ?? `code ${code}`}): ${tail.slice(-3).join(' / ')}`));
    });
    if (child.pid !== undefined) await fsp.writeFile(this.o.pidFile, `${child.pid}\n${[this.o.command, ...this.o.args].join(' ')}\n`, { mode: 0o600 });
    try {
      const early = exited.then((why) => {
        throw new Error(why);
      });
      await Promise.race([this.o.ready(child.pid ?? -1), early]);
      early.catch(() => undefined);
    } catch (e) {
      this.lastError = errorMessage(e);
      this.state = 'failed';
      child.kill('SIGKILL');
      await exited;
      this.child = undefined;
      throw e;
    }
    this.state = 'ok';
    this.lastError = undefined;
    this.log.info('server running', { pid: child.pid });
    void exited.then((why) => this.onExit(child, why));
  }

  private onExit(child: ChildProcess, why: string): void {
    if (this.child !== child || this.stopping) return;
    this.child = undefined;
    this.crashed(why);
  }

  /** Restarts after a crash or a failed restart, unless it happened too often lately. */
  private crashed(why: string): void {
    this.lastError = why;
    const now = Date.now();
    this.restarts = this.restarts.filter((t) => now - t < (this.o.windowMs ?? 60_000));
    if (this.restarts.length >= (this.o.maxRestarts ?? 5)) {
      this.state = 'failed';
      this.log.error('server keeps dying: giving up', { reason: why, restarts: this.restarts.length });
      return;
    }
    this.restarts.push(now);
    this.restartCount++;
    this.state = 'starting';
    this.log.warn('server died: restarting', { reason: why });
    setTimeout(() => {
      if (this.stopping) return;
      this.start().catch((e: unknown) => {
        if (!this.stopping) this.crashed(errorMessage(e));
      });
    }, this.o.restartDelayMs ?? 500);
  }

  /** Sends SIGHUP (smbd re-reads its config). */
  signal(sig: NodeJS.Signals): void {
    this.child?.kill(sig);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const child = this.child;
    this.child = undefined;
    if (child && child.exitCode === null && child.signalCode === null) {
      const gone = new Promise<void>((r) => child.once('exit', () => r()));
      if (this.o.beforeStop) await this.o.beforeStop().catch((e: unknown) => this.log.warn('clean stop failed', { error: errorMessage(e) }));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(timer);
    }
    await fsp.rm(this.o.pidFile, { force: true });
    this.state = 'stopped';
    this.log.info('server stopped');
  }
}

/** Resolves when a TCP port accepts connections (the server is listening), or throws after `ms`. */
export async function waitForPort(host: string, port: number, ms = 20_000): Promise<void> {
  const { connect } = await import('node:net');
  const deadline = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host: host === '0.0.0.0' ? '127.0.0.1' : host, port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${host}:${port} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A server run under a Supervisor: its health, error, pid and restarts are the supervisor's. */
export abstract class SupervisedServer {
  protected abstract readonly supervisor: Supervisor;

  get health(): Health {
    return this.supervisor.health;
  }
  get error(): string | undefined {
    return this.supervisor.error;
  }
  get pid(): number | undefined {
    return this.supervisor.pid;
  }
  get restarts(): number {
    return this.supervisor.restartCount;
  }
}
