/**
 * Runs the built agent CLI (dist/) as a child process, the way users and the appliance do.
 * Tests that use it need `npm run build` first (.ci/run does it).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';

export const AGENT_CLI = resolve(import.meta.dirname, '../../dist/appliance/src/cli.js');
export const WRAPPER_CLI = resolve(import.meta.dirname, '../../dist/wrapper/src/cli.js');

export function assertBuilt(): void {
  if (!existsSync(AGENT_CLI)) throw new Error(`${AGENT_CLI} is missing: run "npm run build" first`);
}

export interface Running {
  child: ChildProcess;
  output: () => string;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
}

/** Starts `bridge-agent ARGS` and resolves once a line of its output matches `ready`. */
export async function startAgent(args: string[], ready: RegExp, timeoutMs = 30_000): Promise<Running> {
  assertBuilt();
  const child = spawn(process.execPath, [AGENT_CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  await new Promise<void>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`agent did not become ready in ${timeoutMs} ms:\n${out}`)), timeoutMs);
    const onData = (d: Buffer): void => {
      out += d.toString();
      if (ready.test(out)) {
        clearTimeout(timer);
        res();
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      rej(new Error(`agent exited with ${code} before it was ready:\n${out}`));
    });
  });
  return { child, output: () => out, exited };
}

/** Sends a signal and waits for the process to exit. */
export async function stopAgent(r: Running, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill(signal);
  return r.exited;
}
