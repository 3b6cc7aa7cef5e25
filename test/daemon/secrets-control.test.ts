/** Secret references and the control socket's framing, without servers. */
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { controlRequest, listenControl } from '../../appliance/src/daemon/control.js';
import { Secrets } from '../../appliance/src/daemon/secrets.js';
import { BridgeError } from '../../shared/src/errors.js';
import { Logger } from '../../shared/src/logger.js';

const dir = mkdtempSync(join(tmpdir(), 'bridge-secrets-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('secrets', () => {
  it('reads files (one trailing newline dropped), env and pushed values; names what is missing', async () => {
    writeFileSync(join(dir, 's'), 'pa ss\n');
    const s = new Secrets({ SECRET_X: 'from-env' });
    expect(await s.resolve({ file: join(dir, 's') }, 'user "a" password')).toBe('pa ss');
    expect(await s.resolve({ env: 'SECRET_X' }, 'x')).toBe('from-env');
    await expect(s.resolve({ env: 'NOPE' }, 'user "b" password')).rejects.toThrow(/user "b" password: environment variable NOPE is not set/);
    await expect(s.resolve({ file: join(dir, 'missing') }, 'chap')).rejects.toThrow(/chap: cannot read secret file .*missing: ENOENT/);
    expect(await s.resolve({ pushed: 'p' }, 'x')).toBeUndefined();
    expect(s.put('p', 'v1')).toBe(true);
    expect(s.put('p', 'v1')).toBe(false);
    expect(await s.resolve({ pushed: 'p' }, 'x')).toBe('v1');
    expect(() => s.put('p', 'two\nlines')).toThrow(/line break/);
    expect(s.names()).toEqual(['p']);
  });
});

describe('control socket', () => {
  it('answers one JSON line per request, with errors carrying their code, on a 0600 socket', async () => {
    const sock = join(dir, 'control.sock');
    const lines: string[] = [];
    const log = new Logger({ level: 'debug', write: (l) => lines.push(l) });
    const server = await listenControl(
      sock,
      async (req) => {
        if (req.method === 'status') return { ok: 1 };
        if (req.method === 'putSecret') return { got: req.params.name };
        throw new BridgeError('ENOENT', 'no such thing');
      },
      log,
    );
    try {
      expect(statSync(sock).mode & 0o777).toBe(0o600);
      expect(await controlRequest(sock, { method: 'status' })).toEqual({ ok: 1 });
      expect(await controlRequest(sock, { method: 'putSecret', params: { name: 'n', value: 'very-secret-value' } })).toEqual({ got: 'n' });
      await expect(controlRequest(sock, { method: 'reload' })).rejects.toMatchObject({ code: 'ENOENT', message: 'no such thing' });
      // Malformed input gets an error line, not a dropped connection.
      const raw = await new Promise<string>((res) => {
        const c = createConnection(sock, () => c.write('not json\n'));
        c.setEncoding('utf8');
        c.on('data', (d: string) => {
          res(d);
          c.end();
        });
      });
      expect(JSON.parse(raw)).toMatchObject({ ok: false, error: { code: 'EINVAL' } });
      expect(lines.join('\n')).not.toContain('very-secret-value');
    } finally {
      server.close();
    }
    await expect(controlRequest(join(dir, 'none.sock'), { method: 'status' })).rejects.toThrow(/no agent is running/);
  });
});
