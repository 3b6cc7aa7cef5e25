/**
 * What both CLIs (`bridge` and `bridge-agent`) do the same way: logging flags, results on stdout
 * (JSON for scripts, text for people), one clear error line and a failing exit code.
 */
import type { Command } from 'commander';
import { BridgeError, errorMessage, type ErrorCode } from './errors.js';
import { configureLogger, type LogLevel } from './logger.js';
import { parseSize } from './size.js';

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

/**
 * Wraps an action so that errors print one clear line (and, with --json, a JSON object on stdout)
 * and set the exit code: 2 for errors in what the user gave (`usageCodes`), 1 for the rest.
 */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void>, usageCodes: readonly ErrorCode[] = ['CONFIG']): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (e) {
      const json = args.some((a) => typeof a === 'object' && a !== null && (a as { json?: boolean }).json === true);
      if (json) process.stdout.write(JSON.stringify({ error: e instanceof BridgeError ? e.toJSON() : { code: 'ERROR', message: errorMessage(e) } }) + '\n');
      process.stderr.write(`error: ${errorMessage(e)}\n`);
      process.exitCode = e instanceof BridgeError && usageCodes.includes(e.code) ? 2 : 1;
    }
  };
}

/** commander argument parser for sizes, naming the option in its error. */
export function sizeOption(what: string): (v: string) => number {
  return (v: string) => parseSize(v, what);
}
