/** Shared pieces of the store tests: an s3rver child process, temp dirs, quick volumes. */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { S3Client, CreateBucketCommand } from '@aws-sdk/client-s3';
import { freePort } from '../helpers/ports.js';
import { configureLogger } from '../../shared/src/logger.js';

export const REPO = resolve(import.meta.dirname, '../..');
/** Cheap scrypt for tests (the default costs ~0.1 s per open). */
export const TEST_KDF = { N: 1024, r: 8, p: 1 };

export function quietLogs(): void {
  configureLogger({ level: (process.env.BRIDGE_LOG_LEVEL as 'debug' | undefined) ?? 'silent' });
}

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `bridge-${prefix}-`));
}

export interface S3Server {
  endpoint: string;
  pid: number;
  stop(): Promise<void>;
}

/** Starts s3rver on 127.0.0.1 as a child process (stopped by PID) with the given buckets. */
export async function startS3rver(buckets: string[]): Promise<S3Server> {
  process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
  process.env.AWS_REGION = 'us-east-1';
  const port = await freePort();
  const dir = tempDir('s3rver');
  const script = `const S3rver = require('s3rver');
new S3rver({ port: ${port}, address: '127.0.0.1', silent: true, directory: ${JSON.stringify(dir)} }).run().then(() => console.log('ready'));`;
  const child: ChildProcess = spawn(process.execPath, ['-e', script], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((res, rej) => {
    const t = setTimeout(() => rej(new Error('s3rver did not start')), 20_000);
    child.stdout!.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) {
        clearTimeout(t);
        res();
      }
    });
    child.on('exit', (code) => rej(new Error(`s3rver exited with ${code}`)));
  });
  const endpoint = `http://127.0.0.1:${port}`;
  const client = new S3Client({ endpoint, forcePathStyle: true, region: 'us-east-1' });
  for (const b of buckets) await client.send(new CreateBucketCommand({ Bucket: b }));
  client.destroy();
  return {
    endpoint,
    pid: child.pid!,
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        process.kill(child.pid!, 'SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
