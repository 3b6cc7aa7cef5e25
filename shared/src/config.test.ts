import { describe, expect, it } from 'vitest';
import { parseAgentConfig } from './config.js';

const ok = {
  version: 1,
  users: [{ name: 'alice', password: { env: 'ALICE_PW' } }],
  sources: [
    { kind: 'directory', name: 'data', path: '/srv/data' },
    {
      kind: 'store',
      name: 'vault',
      store: 's3://bucket/prefix',
      endpoint: 'http://127.0.0.1:9000',
      passphrase: { file: '/run/secrets/p' },
      cache: { size: '1G' },
    },
  ],
  stages: [{ kind: 'fat32', name: 'vol', from: 'data', size: '2G' }],
  exports: [
    { kind: 'smb', name: 'data', from: 'data', users: ['alice'] },
    { kind: 'iscsi', name: 'vol', from: 'vol', chap: { user: 'init', secret: { pushed: 'chap' } } },
  ],
};

describe('agent config', () => {
  it('accepts a full configuration and fills defaults', () => {
    const cfg = parseAgentConfig(ok);
    expect(cfg.listen).toEqual({ address: '127.0.0.1', smbPort: 445, nfsPort: 2049, iscsiPort: 3260 });
    const store = cfg.sources[1];
    expect(store?.kind === 'store' && store.cache.size).toBe(1024 ** 3);
    expect(cfg.stages[0]).toMatchObject({ kind: 'fat32', size: 2 * 1024 ** 3 });
  });

  it('refuses inline secrets, naming the field', () => {
    const bad = structuredClone(ok) as Record<string, unknown>;
    (bad.users as unknown[])[0] = { name: 'alice', password: 'hunter2' };
    expect(() => parseAgentConfig(bad, 'agent.json')).toThrow(/agent\.json: users\.0\.password: a secret reference/);
  });

  it('names unknown references and bad sizes', () => {
    const unknown = structuredClone(ok) as { exports: { from: string }[] };
    unknown.exports[0]!.from = 'nothing';
    expect(() => parseAgentConfig(unknown)).toThrow(/exports\.0\.from: no source or stage is named "nothing"/);
    const badSize = structuredClone(ok) as { stages: { size: string }[] };
    badSize.stages[0]!.size = 'lots';
    expect(() => parseAgentConfig(badSize)).toThrow(/stages\.0\.size: size: expected a size like/);
  });

  it('requires credentials on SMB exports', () => {
    const bad = structuredClone(ok) as { exports: { users?: string[] }[] };
    bad.exports[0]!.users = [];
    expect(() => parseAgentConfig(bad)).toThrow(/exports need credentials/);
  });
});
