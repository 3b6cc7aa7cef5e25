/** Pieces every `bridge` command shares: JSON output, error reporting, option parsers, the context. */
import type { Command } from 'commander';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import { configureLogger, type LogLevel } from '../../../shared/src/logger.js';
import { parseSize } from '../../../shared/src/size.js';
import { defaultContext, type Context } from '../instance.js';
import { silentProgress, StderrProgress } from '../progress.js';

export interface GlobalOptions {
  logLevel: LogLevel;
  logJson: boolean;
}

export function applyGlobalOptions(program: Command): void {
  const opts = program.opts<GlobalOptions>();
  configureLogger({ level: opts.logLevel, json: opts.logJson });
}

/** Prints a command's result: JSON for scripts, text for people. stdout only carries results. */
export function output(json: boolean, value: unknown, text: () => string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 2) + '\n' : text() + '\n');
}

/** Wraps an action so that errors print one clear line (or a JSON object) and set a failing exit code. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (e) {
      const json = args.some((a) => typeof a === 'object' && a !== null && (a as { json?: boolean }).json === true);
      if (json) process.stdout.write(JSON.stringify({ error: e instanceof BridgeError ? e.toJSON() : { code: 'ERROR', message: errorMessage(e) } }) + '\n');
      process.stderr.write(`error: ${errorMessage(e)}\n`);
      process.exitCode = e instanceof BridgeError && (e.code === 'CONFIG' || e.code === 'EINVAL') ? 2 : 1;
    }
  };
}

export function sizeOption(what: string): (v: string) => number {
  return (v: string) => parseSize(v, what);
}

export function intOption(what: string, min: number, max: number): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new BridgeError('EINVAL', `${what}: expected a whole number from ${min} to ${max}, got "${v}"`);
    return n;
  };
}

export function context(opts: { quiet?: boolean; accel?: string }): Context {
  return defaultContext(opts.quiet ? silentProgress : new StderrProgress(), opts.accel);
}

export const DEFAULT_NAME = 'default';
