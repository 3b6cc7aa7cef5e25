/**
 * Where share passwords come from, in order: --password-file FILE, the BRIDGE_PASSWORD environment
 * variable, an interactive prompt (--ask-password; never echoed), else a generated one that `bridge
 * start` prints once. Never from a command-line argument (visible to every local user in ps).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { BridgeError } from '../../shared/src/errors.js';

export interface ResolvedCredentials {
  user: string;
  password: string;
  /** iSCSI CHAP secret: the password when it fits CHAP's 12-16 characters, else generated. */
  chapSecret: string;
  generated: boolean;
  chapGenerated: boolean;
}

const ALPHABET = 'ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789';

export function generateSecret(length = 16): string {
  const bytes = randomBytes(length * 2);
  let out = '';
  for (const b of bytes) {
    if (b >= 256 - (256 % ALPHABET.length)) continue; // no modulo bias
    out += ALPHABET[b % ALPHABET.length];
    if (out.length === length) return out;
  }
  return out + generateSecret(length - out.length);
}

export async function promptHidden(question: string): Promise<string> {
  if (!process.stdin.isTTY) throw new BridgeError('EINVAL', '--ask-password needs a terminal; use --password-file FILE or BRIDGE_PASSWORD');
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
  const out = rl as unknown as { _writeToOutput: (s: string) => void; output: NodeJS.WriteStream };
  let asked = false;
  out._writeToOutput = (s: string) => {
    if (!asked) {
      out.output.write(s);
      asked = true;
    }
  };
  try {
    return await new Promise<string>((resolve) => rl.question(question, resolve));
  } finally {
    process.stderr.write('\n');
    rl.close();
  }
}

export interface CredentialOptions {
  user?: string;
  passwordFile?: string;
  askPassword?: boolean;
}

export const USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;

export async function resolveCredentials(o: CredentialOptions, env: NodeJS.ProcessEnv = process.env): Promise<ResolvedCredentials> {
  const user = o.user ?? 'bridge';
  if (!USER_RE.test(user)) throw new BridgeError('EINVAL', `--user: "${user}" must be a lowercase Unix user name (letters, digits, "_" or "-", at most 32)`);
  if (user === 'root') throw new BridgeError('EINVAL', '--user: root cannot be a share user');
  let password: string | undefined;
  if (o.passwordFile) {
    let text: string;
    try {
      text = readFileSync(o.passwordFile, 'utf8');
    } catch (e) {
      throw new BridgeError('ENOENT', `--password-file: cannot read ${o.passwordFile}: ${(e as Error).message}`);
    }
    password = text.split(/\r?\n/)[0] ?? '';
    if (!password) throw new BridgeError('EINVAL', `--password-file: ${o.passwordFile} is empty (the first line is the password)`);
  } else if (env.BRIDGE_PASSWORD) password = env.BRIDGE_PASSWORD;
  else if (o.askPassword) password = await promptHidden(`password for ${user}: `);
  if (password !== undefined && password.length < 8) throw new BridgeError('EINVAL', 'the password must have at least 8 characters');
  const generated = password === undefined;
  const pw = password ?? generateSecret(16);
  const chapFits = pw.length >= 12 && pw.length <= 16;
  return { user, password: pw, chapSecret: chapFits ? pw : generateSecret(16), generated, chapGenerated: !chapFits };
}
