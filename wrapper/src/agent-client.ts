/**
 * Talking to the agent in the guest over SSH (ssh2). Fast path: the agent's control socket through an
 * SSH stream-local forward (one JSON request per line, shared/src/protocol.ts) — no Node start in the
 * guest per call. Fallback: the `bridge-agent ...` commands over exec. Secrets travel only on stdin or
 * inside the encrypted channel, never in a command line.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import ssh2 from 'ssh2';
import { BridgeError, errorMessage } from '../../shared/src/errors.js';
import { logger } from '../../shared/src/logger.js';
import {
  controlResult,
  type AgentStatus,
  type ConfigureParams,
  type ConfigureResult,
  type ControlRequest,
  type RandomProbe,
} from '../../shared/src/protocol.js';
import { tail } from './runner.js';

const log = logger().child({ component: 'agent-client' });

export const GUEST_CONTROL_SOCKET = '/run/bridge/control.sock';

export interface SshTarget {
  host: string;
  port: number;
  user: string;
  privateKey: string;
  /** Pinned SHA-256 (hex) of the guest host key; undefined on first contact. */
  hostKeySha256?: string;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

type ControlMethod = ControlRequest['method'];

export class AgentSession {
  private nextId = 1;
  private controlWorks: boolean | undefined;

  private constructor(
    private readonly client: ssh2.Client,
    readonly hostKeySha256: string,
  ) {}

  static connect(t: SshTarget, readyTimeoutMs = 10_000): Promise<AgentSession> {
    return new Promise((resolve, reject) => {
      const client = new ssh2.Client();
      let seenKey = '';
      client.on('ready', () => resolve(new AgentSession(client, seenKey)));
      client.on('error', (e) => reject(new BridgeError('EIO', `ssh ${t.user}@${t.host}:${t.port}: ${e.message}`)));
      client.connect({
        host: t.host,
        port: t.port,
        username: t.user,
        privateKey: t.privateKey,
        readyTimeout: readyTimeoutMs,
        hostVerifier: (key: Buffer) => {
          seenKey = createHash('sha256').update(key).digest('hex');
          return t.hostKeySha256 === undefined || t.hostKeySha256 === seenKey;
        },
      });
    });
  }

  exec(command: string, input?: string, timeoutMs = 60_000): Promise<ExecResult> {
    return new Promise((resolve, reject) => {
      this.client.exec(command, (err, stream) => {
        if (err) return reject(new BridgeError('EIO', `ssh exec ${command}: ${err.message}`));
        let stdout = '';
        let stderr = '';
        const timer = setTimeout(() => {
          stream.close();
          reject(new BridgeError('EIO', `${command} did not finish within ${timeoutMs} ms in the guest`));
        }, timeoutMs);
        stream.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
        stream.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
        stream.on('close', (code: number | null) => {
          clearTimeout(timer);
          resolve({ code: code ?? 255, stdout, stderr });
        });
        stream.end(input ?? '');
      });
    });
  }

  /** One request on the agent's control socket. */
  private controlRequest(method: ControlMethod, params?: unknown, timeoutMs = 30_000): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.client.openssh_forwardOutStreamLocal(GUEST_CONTROL_SOCKET, (err, stream) => {
        if (err) return reject(new BridgeError('ENOENT', `agent control socket: ${err.message}`));
        let buf = '';
        const timer = setTimeout(() => {
          stream.close();
          reject(new BridgeError('EIO', `agent ${method}: no answer within ${timeoutMs} ms`));
        }, timeoutMs);
        stream.on('data', (d: Buffer) => {
          buf += d.toString('utf8');
          const nl = buf.indexOf('\n');
          if (nl < 0) return;
          clearTimeout(timer);
          stream.close();
          try {
            resolve(controlResult(buf.slice(0, nl), 'agent: '));
          } catch (err) {
            reject(err);
          }
        });
        stream.on('close', () => {
          clearTimeout(timer);
          if (!buf.includes('\n')) reject(new BridgeError('EIO', `agent ${method}: connection closed without an answer`));
        });
        stream.write(JSON.stringify(params === undefined ? { id, method } : { id, method, params }) + '\n');
      });
    });
  }

  /**
   * Control socket first. Only when it cannot be opened (not an agent error) and `execFallback` is on,
   * the `bridge-agent` command over exec — which starts Node in the guest, seconds under TCG, so it is
   * never used while the agent is still starting (its socket appears a moment later).
   */
  execFallback = true;

  private async call<T>(method: ControlMethod, params: unknown, fallback: () => Promise<T>): Promise<T> {
    try {
      const r = (await this.controlRequest(method, params)) as T;
      this.controlWorks = true;
      return r;
    } catch (e) {
      if (!(e instanceof BridgeError && e.code === 'ENOENT') || this.controlWorks || !this.execFallback) throw e;
      log.debug('control socket unavailable, using bridge-agent over exec', { error: errorMessage(e) });
      return fallback();
    }
  }

  private async agentCommand(args: string, input?: string): Promise<string> {
    const r = await this.exec(`bridge-agent ${args}`, input);
    if (r.code !== 0) throw new BridgeError('EIO', `bridge-agent ${args} failed in the guest (exit ${r.code}): ${tail(r.stderr || r.stdout, 5)}`);
    return r.stdout;
  }

  status(): Promise<AgentStatus> {
    return this.call('status', undefined, async () => JSON.parse(await this.agentCommand('status --json')) as AgentStatus);
  }

  async putSecret(name: string, value: string): Promise<void> {
    await this.call('putSecret', { name, value }, () => this.agentCommand(`secret put ${name}`, value));
  }

  async setCacheSize(bytes: number, source?: string): Promise<void> {
    await this.call('setCacheSize', source ? { source, bytes } : { bytes }, () =>
      this.agentCommand(`config set cache-size ${bytes}${source ? ` --source ${source}` : ''}`),
    );
  }

  /** A template copy's one configuration (no exec fallback: only the running agent can take it). */
  configure(params: ConfigureParams): Promise<ConfigureResult> {
    return this.controlRequest('configure', params) as Promise<ConfigureResult>;
  }

  probeRandom(): Promise<RandomProbe> {
    return this.controlRequest('probeRandom') as Promise<RandomProbe>;
  }

  async stopAgent(): Promise<void> {
    await this.call('shutdown', undefined, () => this.agentCommand('stop'));
  }

  /**
   * Asks the guest to power off; bridge-init stops the agent (exports, unmounts, flush) first. SIGUSR2
   * to PID 1 is exactly what `bridge-agent guest poweroff` sends, without starting Node in the guest
   * (seconds under TCG); the command and plain poweroff are the fallbacks.
   */
  async powerOff(): Promise<void> {
    await this.exec('kill -USR2 1 || bridge-agent guest poweroff || poweroff', undefined, 15_000).catch(() => undefined);
  }

  close(): void {
    this.client.end();
  }
}

export function consoleTail(path: string, lines = 25): string {
  if (!existsSync(path)) return '(no console log)';
  return tail(readFileSync(path, 'utf8').replace(/\r/g, ''), lines) || '(console log is empty)';
}

export interface WaitOptions {
  target: SshTarget;
  timeoutMs: number;
  consoleLog: string;
  /** Still worth waiting (the VM is alive)? */
  alive: () => Promise<boolean>;
  onPhase?: (phase: string) => void;
  /**
   * Gives up early (BootStalled) when the console still shows no line of the appliance (the
   * initramfs prints one first thing) after this long: a guest stuck before it, seen once here under
   * TCG with an empty console for 300 s, does not come back by waiting.
   */
  stallMs?: number;
}

/** A boot whose console shows nothing of the appliance after this long is taken for stuck. */
export const STALL_MS = 60_000;

/** The VM showed no sign of life on its console: worth one more start (retryStalledBoot). */
export class BootStalled extends BridgeError {}

/** What every appliance console shows once the initramfs runs. */
const LIFE_SIGN = 'bridge-';

function stalled(o: WaitOptions, startedAt: number): boolean {
  if (o.stallMs === undefined || Date.now() - startedAt < o.stallMs || !existsSync(o.consoleLog)) return false;
  return !readFileSync(o.consoleLog, 'utf8').includes(LIFE_SIGN);
}

/** Runs a boot (start + wait); when it stalled, stops that VM and boots once more. */
export async function retryStalledBoot<T>(boot: () => Promise<T>, stop: () => Promise<void>): Promise<T> {
  try {
    return await boot();
  } catch (e) {
    if (!(e instanceof BootStalled)) throw e;
    log.warn('the VM showed no sign of life: starting it again', { reason: e.message });
    await stop().catch(() => undefined);
    return boot();
  }
}

/** Connects as soon as sshd answers and the agent's control socket exists. */
export async function waitForAgent(o: WaitOptions): Promise<AgentSession> {
  const startedAt = Date.now();
  const deadline = startedAt + o.timeoutMs;
  let last = 'no answer yet';
  o.onPhase?.('waiting for SSH');
  while (Date.now() < deadline) {
    if (!(await o.alive())) {
      throw new BridgeError('EIO', `the VM exited while booting. Console log (${o.consoleLog}), last lines:\n${consoleTail(o.consoleLog)}`);
    }
    if (stalled(o, startedAt))
      throw new BootStalled('EIO', `the VM printed nothing of the appliance on its console within ${Math.round(o.stallMs! / 1000)} s (${o.consoleLog})`);
    let session: AgentSession | undefined;
    try {
      session = await AgentSession.connect(o.target, Math.max(1000, Math.min(5000, deadline - Date.now())));
      o.onPhase?.('waiting for the agent');
      while (Date.now() < deadline) {
        // The socket only, until half the time is gone (an agent with another runtime dir: then exec).
        session.execFallback = Date.now() > deadline - o.timeoutMs / 2;
        try {
          await session.status();
          return session;
        } catch (e) {
          last = errorMessage(e);
          await new Promise((r) => setTimeout(r, 200));
        }
      }
      session.close();
    } catch (e) {
      session?.close();
      last = errorMessage(e);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw new BridgeError(
    'EIO',
    `the appliance's agent did not answer within ${Math.round(o.timeoutMs / 1000)} s (last: ${last}). Console log (${o.consoleLog}), last lines:\n${consoleTail(o.consoleLog)}`,
  );
}

/** Polls status until no export is still starting (or the deadline); returns the last status. */
export async function waitForExports(session: AgentSession, timeoutMs: number): Promise<AgentStatus> {
  const deadline = Date.now() + timeoutMs;
  let status = await session.status();
  while (Date.now() < deadline) {
    const waiting = status.exports.some((e) => e.health === 'starting') || !status.ready;
    if (!waiting) return status;
    if (status.exports.length && status.exports.every((e) => e.health === 'failed')) return status;
    await new Promise((r) => setTimeout(r, 200));
    status = await session.status();
  }
  return status;
}
