/**
 * Secrets by reference: a file (its content, one trailing newline dropped), an environment variable,
 * or a value pushed over the control socket (`bridge-agent secret put NAME`). Pushed secrets live only
 * in this process's memory. A pushed secret that has not arrived yet resolves to `undefined`
 * (pending), and whoever needs it is retried when it arrives. Values are never logged.
 */
import { promises as fsp } from 'node:fs';
import type { SecretRef } from '../../../shared/src/config.js';
import { BridgeError } from '../../../shared/src/errors.js';

export class Secrets {
  private readonly pushed = new Map<string, string>();

  constructor(private readonly env: NodeJS.ProcessEnv = process.env) {}

  /** The secret's value, or undefined while a pushed secret has not arrived. `what` names the user of it in errors. */
  async resolve(ref: SecretRef, what: string): Promise<string | undefined> {
    if ('pushed' in ref) return this.pushed.get(ref.pushed);
    if ('env' in ref) {
      const v = this.env[ref.env];
      if (v === undefined || v === '') throw new BridgeError('CONFIG', `${what}: environment variable ${ref.env} is not set`);
      return v;
    }
    let text: string;
    try {
      text = await fsp.readFile(ref.file, 'utf8');
    } catch (e) {
      throw new BridgeError(
        'CONFIG',
        `${what}: cannot read secret file ${ref.file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
        {},
        { cause: e },
      );
    }
    const v = text.replace(/\r?\n$/, '');
    if (!v) throw new BridgeError('CONFIG', `${what}: secret file ${ref.file} is empty`);
    return v;
  }

  /** Stores a pushed secret; returns whether its value changed. */
  put(name: string, value: string): boolean {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(name)) throw new BridgeError('EINVAL', `bad secret name "${name}"`);
    if (!value) throw new BridgeError('EINVAL', `secret "${name}" is empty`);
    if (/[\n\r\0]/.test(value)) throw new BridgeError('EINVAL', `secret "${name}" contains a line break or NUL`);
    const changed = this.pushed.get(name) !== value;
    this.pushed.set(name, value);
    return changed;
  }

  /** Names of pushed secrets that have arrived (never their values). */
  names(): string[] {
    return [...this.pushed.keys()].sort();
  }
}

/** Describes where a secret comes from without its value, for status and errors. */
export function describeRef(ref: SecretRef): string {
  return 'pushed' in ref ? `pushed secret "${ref.pushed}"` : 'env' in ref ? `environment variable ${ref.env}` : `file ${ref.file}`;
}
