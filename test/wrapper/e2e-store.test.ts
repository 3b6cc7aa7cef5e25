/**
 * End to end with a chunked store on S3: s3rver runs on the host's 127.0.0.1, `bridge start` hands the
 * guest the endpoint as the host's address on its NAT (10.0.2.2) and the access keys as pushed
 * secrets; data written over iSCSI survives `bridge stop` and a second `bridge start`.
 * Skipped when no appliance image has been built (.ci/run builds it first).
 */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createStore } from '../../appliance/src/store/index.js';
import type { StatusEntry } from '../../wrapper/src/instance.js';
import { startS3rver, type S3Server } from '../store/helpers.js';
import { bridge, findManifest, makeEnv, run } from './e2e-helpers.js';

const manifest = findManifest();

describe.skipIf(!manifest)('bridge start with store:s3 (s3rver on the host), data kept across stop/start', () => {
  const base = manifest ? makeEnv(manifest) : {};
  const root = base.E2E_ROOT ?? '';
  const name = `e2e-s3-${process.pid}`;
  const password = 'e2e-Chap-12345';
  let s3: S3Server;
  let env: NodeJS.ProcessEnv;
  const pwFile = join(root, 'pw');
  const chap = { ...process.env, LIBISCSI_CHAP_USERNAME: 'tester', LIBISCSI_CHAP_PASSWORD: password };

  beforeAll(async () => {
    s3 = await startS3rver(['vols']);
    await createStore({ store: 's3://vols/e2e/', endpoint: s3.endpoint, size: 64 * 1024 * 1024, cipher: 'none' });
    writeFileSync(pwFile, password + '\n', { mode: 0o600 });
    env = { ...base, AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' };
  }, 60_000);

  afterAll(async () => {
    await bridge(['stop', name, '--timeout', '3'], env, 60_000).catch(() => undefined);
    await s3?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  async function startAndFindLun(): Promise<string> {
    const start = await bridge(
      [
        'start',
        '--name',
        name,
        '--source',
        'store:s3://vols/e2e/',
        '--endpoint',
        s3.endpoint,
        '--export',
        'iscsi',
        '--user',
        'tester',
        '--password-file',
        pwFile,
        '--no-mount',
        '--json',
        '--boot-timeout',
        '300',
      ],
      env,
      420_000,
    );
    expect(start.code, start.stderr).toBe(0);
    const status = await bridge(['status', '--json'], env);
    const entry = (JSON.parse(status.stdout) as StatusEntry[]).find((e) => e.name === name)!;
    const lun = entry.endpoints.find((e) => e.protocol === 'iscsi');
    expect(lun?.health).toBe('ok');
    return lun!.url;
  }

  it('writes over iSCSI, stops, starts again and reads the same bytes back', async () => {
    let lun = await startAndFindLun();
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xa7 3M 640k', '-c', 'flush', lun], chap, 120_000);
    expect(write.code, write.stderr).toBe(0);
    const stop = await bridge(['stop', name], env, 120_000);
    expect(stop.code, stop.stderr).toBe(0);

    lun = await startAndFindLun();
    const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xa7 3M 640k', '-c', 'read -P 0 0 1M', lun], chap, 120_000);
    expect(read.code, read.stderr).toBe(0);
    expect(read.stdout).not.toMatch(/verification failed|Pattern verification/i);
    expect(read.stdout).toMatch(/read 655360\/655360 bytes/);
  }, 900_000);
});
