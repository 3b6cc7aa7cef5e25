/**
 * A chunked-store source in the agent: its passphrase is pushed after start (the source and its
 * export wait for it, readiness does not), it is served over iSCSI through its FUSE file, and its
 * cache limit changes live with `bridge-agent config set cache-size`.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createStore } from '../../appliance/src/store/index.js';
import { startS3rver, type S3Server } from '../store/helpers.js';
import { freePort } from '../helpers/ports.js';
import { AgentProcess, agentCli, leftovers, sh } from './agent-process.js';

const CHAP = 'store-chap-secret';

describe('store source', () => {
  let dir = '';
  let agent: AgentProcess;
  let port = 0;
  const lun = (): string => `iscsi://suser%${CHAP}@127.0.0.1:${port}/iqn.2026-11.org.bridge:vol/1`;

  beforeAll(async () => {
    dir = AgentProcess.tempDir('bridge-store-src-');
    port = await freePort();
    mkdirSync(join(dir, 'vol'));
    await createStore({ store: `dir:${join(dir, 'vol')}`, size: 64 * 1024 * 1024, passphrase: 'vol-pass', kdf: { N: 1024, r: 8, p: 1 } });
    agent = new AgentProcess(
      dir,
      {
        version: 1,
        runtimeDir: join(dir, 'run'),
        listen: { address: '127.0.0.1', iscsiPort: port },
        sources: [
          { kind: 'store', name: 'vol', store: `dir:${join(dir, 'vol')}`, passphrase: { pushed: 'volpass' }, cache: { dir: join(dir, 'cache'), size: '16M' } },
        ],
        exports: [{ kind: 'iscsi', name: 'vol', from: 'vol', chap: { user: 'suser', secret: { env: 'STORE_CHAP' } } }],
      },
      { STORE_CHAP: CHAP },
    );
    await agent.start();
  });

  afterAll(async () => {
    await agent?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('waits for the pushed passphrase, then serves the store over iSCSI', async () => {
    const s = await agent.status();
    expect(s.ready).toBe(true);
    expect(s.sources[0]).toMatchObject({ health: 'starting', error: 'waiting for pushed secret "volpass"' });
    expect(s.exports[0]!.health).toBe('starting');
    const put = await agentCli(['secret', 'put', 'volpass', '--json', '--runtime-dir', agent.runtimeDir], 'vol-pass\n');
    expect(JSON.parse(put.stdout)).toEqual({ changed: true });
    const up = await agent.waitFor((x) => x.exports[0]!.health === 'ok', 'store export');
    expect(up.sources[0]!.details!['store']).toMatchObject({ size: 64 * 1024 * 1024 });
    const w = await sh('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 1M 256k', '-c', 'flush', '-c', 'read -P 0x3c 1M 256k', lun()]);
    expect(w.code, w.stderr).toBe(0);
    expect(w.stdout).not.toMatch(/verification failed/);
  });

  it('changes the cache limit live, and names a wrong source', async () => {
    const r = await agentCli(['config', 'set', 'cache-size', '8M', '--source', 'vol', '--json', '--runtime-dir', agent.runtimeDir]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ sources: ['vol'] });
    expect((await agent.status()).sources[0]!.details!['cacheSize']).toBe(8 * 1024 * 1024);
    const bad = await agentCli(['config', 'set', 'cache-size', '8M', '--source', 'nope', '--runtime-dir', agent.runtimeDir]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/no source is named "nope"/);
    // The export kept serving throughout.
    expect((await sh('qemu-io', ['-f', 'raw', '-c', 'read -P 0x3c 1M 256k', lun()])).stdout).not.toMatch(/verification failed/);
  });

  it('stops with `bridge-agent stop` and leaves nothing behind', async () => {
    const r = await agentCli(['stop', '--runtime-dir', agent.runtimeDir]);
    expect(r.code, r.stderr).toBe(0);
    expect(await leftovers(agent.runtimeDir)).toEqual([]);
  });
});

describe('store source on S3 with pushed access keys', () => {
  let dir = '';
  let agent: AgentProcess;
  let s3: S3Server;
  let port = 0;
  const lun = (): string => `iscsi://suser%${CHAP}@127.0.0.1:${port}/iqn.2026-11.org.bridge:s3vol/1`;

  beforeAll(async () => {
    dir = AgentProcess.tempDir('bridge-store-s3-');
    port = await freePort();
    s3 = await startS3rver(['vols']);
    await createStore({ store: 's3://vols/v1/', endpoint: s3.endpoint, size: 16 * 1024 * 1024, cipher: 'none' });
    agent = new AgentProcess(
      dir,
      {
        version: 1,
        runtimeDir: join(dir, 'run'),
        listen: { address: '127.0.0.1', iscsiPort: port },
        sources: [
          {
            kind: 'store',
            name: 's3vol',
            store: 's3://vols/v1/',
            endpoint: s3.endpoint,
            accessKeyId: { pushed: 'ak' },
            secretAccessKey: { pushed: 'sk' },
            cache: { dir: join(dir, 'cache'), size: '8M' },
          },
        ],
        exports: [{ kind: 'iscsi', name: 's3vol', from: 's3vol', chap: { user: 'suser', secret: { env: 'STORE_CHAP' } } }],
      },
      // The agent's own environment holds a wrong key id (s3rver checks the id, not the secret): only
      // the pushed keys can open the store.
      { STORE_CHAP: CHAP, AWS_ACCESS_KEY_ID: 'WRONG', AWS_SECRET_ACCESS_KEY: 'WRONG' },
    );
    await agent.start();
  });

  afterAll(async () => {
    await agent?.stop();
    await s3?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('waits for both keys, then opens the store with them and serves it', async () => {
    await agentCli(['secret', 'put', 'ak', '--runtime-dir', agent.runtimeDir], 'S3RVER\n');
    expect((await agent.status()).sources[0]).toMatchObject({ health: 'starting', error: 'waiting for pushed secret "sk"' });
    await agentCli(['secret', 'put', 'sk', '--runtime-dir', agent.runtimeDir], 'S3RVER\n');
    await agent.waitFor((x) => x.exports[0]!.health === 'ok', 's3 store export');
    const w = await sh('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 128k', '-c', 'flush', '-c', 'read -P 0x5a 0 128k', lun()]);
    expect(w.code, w.stderr).toBe(0);
    expect(w.stdout).not.toMatch(/verification failed/);
    expect(agent.log).not.toContain('S3RVER');
  });
});
