/** Pieces every `bridge` command shares: JSON output, error reporting, option parsers, the context. */
import { BridgeError } from '../../../shared/src/errors.js';
import { action as sharedAction } from '../../../shared/src/cli.js';
import { defaultContext, type Context } from '../instance.js';
import { silentProgress, StderrProgress } from '../progress.js';

export { applyGlobalOptions, output, sizeOption, type GlobalOptions } from '../../../shared/src/cli.js';

/** Errors in what the user gave (bad flags, bad config) exit with 2, the rest with 1. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return sharedAction(fn, ['CONFIG', 'EINVAL']);
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
