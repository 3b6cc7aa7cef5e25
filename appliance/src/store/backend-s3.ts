/**
 * Object backend on any S3-compatible endpoint through @aws-sdk/client-s3. Credentials come from the
 * standard AWS chain (environment, profile, instance role). With a custom endpoint, path-style
 * addressing is used (MinIO, s3rver, Ceph accept it; virtual-host style needs DNS).
 * S3 puts are durable when acknowledged, so put() needs nothing more.
 */
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsCommand,
  NoSuchKey,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { BridgeError } from '../../../shared/src/errors.js';
import { transientError, type ObjectBackend, type ObjectInfo } from './backend.js';

export interface S3BackendOptions {
  bucket: string;
  /** Key prefix, '' or ending in '/'. */
  prefix: string;
  endpoint?: string;
  region?: string;
  /** Defaults to true when an endpoint is given. */
  forcePathStyle?: boolean;
  /** Parallel connections (uploads + downloads). */
  maxSockets?: number;
  /** Explicit keys (the agent's pushed secrets); else the AWS SDK's default chain. */
  credentials?: S3Credentials;
}

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
}

export class S3Backend implements ObjectBackend {
  readonly location: string;
  private readonly client: S3Client;
  private conditional: Promise<boolean> | undefined;

  constructor(private readonly o: S3BackendOptions) {
    this.location = `s3://${o.bucket}/${o.prefix}`;
    const config: S3ClientConfig = {
      region: o.region ?? process.env.AWS_REGION ?? 'us-east-1',
      forcePathStyle: o.forcePathStyle ?? o.endpoint !== undefined,
      // Our retry layer (retry.ts) owns backoff; one SDK retry covers a stale keep-alive socket.
      maxAttempts: 2,
      // Every chunk object carries its own GCM tag (or CRC-32): the SDK's extra checksums (CRC32 in
      // JavaScript over every body, on both directions) would only cost CPU.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    };
    if (o.endpoint) config.endpoint = o.endpoint;
    if (o.credentials) config.credentials = o.credentials;
    this.client = new S3Client(config);
  }

  async get(key: string): Promise<Buffer | undefined> {
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.o.bucket, Key: this.o.prefix + key }));
      if (!res.Body) return Buffer.alloc(0);
      return Buffer.from(await res.Body.transformToByteArray());
    } catch (e) {
      if (e instanceof NoSuchKey || (e as { name?: string }).name === 'NoSuchKey') return undefined;
      throw wrap(`GET ${key}`, e);
    }
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    try {
      await this.client.send(new PutObjectCommand({ Bucket: this.o.bucket, Key: this.o.prefix + key, Body: data, ContentLength: data.byteLength }));
    } catch (e) {
      throw wrap(`PUT ${key}`, e);
    }
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    try {
      // Conditional create where the endpoint supports it (AWS since 2024, MinIO); others ignore the header,
      // so look first as well.
      if ((await this.get(key)) !== undefined) return false;
      await this.client.send(new PutObjectCommand({ Bucket: this.o.bucket, Key: this.o.prefix + key, Body: data, IfNoneMatch: '*' }));
      return true;
    } catch (e) {
      if (preconditionFailed(e)) return false;
      throw wrap(`PUT ${key}`, e);
    }
  }

  /**
   * Whether the endpoint honours `If-None-Match: *` on PUT (asked once, with a probe object created
   * twice): AWS S3 and MinIO do; s3rver and older servers ignore it, and then putIfAbsent can race.
   */
  atomicCreate(): Promise<boolean> {
    this.conditional ??= this.probeConditionalPut().catch((e: unknown) => {
      this.conditional = undefined;
      throw e;
    });
    return this.conditional;
  }

  private async probeConditionalPut(): Promise<boolean> {
    const key = `${this.o.prefix}lock.probe-${randomBytes(6).toString('hex')}`;
    const put = (): Promise<unknown> => this.client.send(new PutObjectCommand({ Bucket: this.o.bucket, Key: key, Body: 'probe', IfNoneMatch: '*' }));
    try {
      await put();
      try {
        await put();
        return false;
      } catch (e) {
        if (preconditionFailed(e)) return true;
        if ((e as S3ServiceException).$metadata?.httpStatusCode === 501) return false;
        throw e;
      }
    } catch (e) {
      throw wrap('PUT (conditional create probe)', e);
    } finally {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.o.bucket, Key: key })).catch(() => undefined);
    }
  }

  async delete(key: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.o.bucket, Key: this.o.prefix + key }));
    } catch (e) {
      if ((e as S3ServiceException).$metadata?.httpStatusCode === 404) return;
      throw wrap(`DELETE ${key}`, e);
    }
  }

  /**
   * ListObjects (version 1) paged by Marker = the last key seen (keys come sorted). Version 2 would
   * be the same listing on AWS, but s3rver 3.7 builds v2 continuation tokens with DES, which
   * OpenSSL 3 (Node 18+) no longer provides: every truncated v2 listing (> 1000 keys) is HTTP 500 there.
   */
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    let marker: string | undefined;
    for (;;) {
      let res;
      try {
        res = await this.client.send(new ListObjectsCommand({ Bucket: this.o.bucket, Prefix: this.o.prefix + prefix, Marker: marker }));
      } catch (e) {
        throw wrap(`LIST ${prefix}`, e);
      }
      const objects = res.Contents ?? [];
      for (const o of objects) if (o.Key) yield { key: o.Key.slice(this.o.prefix.length), size: o.Size ?? 0 };
      const last = objects[objects.length - 1]?.Key;
      if (!res.IsTruncated || !last) return;
      marker = last;
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}

function preconditionFailed(e: unknown): boolean {
  const status = (e as S3ServiceException).$metadata?.httpStatusCode;
  return status === 412 || status === 409;
}

function wrap(what: string, e: unknown): BridgeError {
  const err = e as S3ServiceException & { code?: string };
  const status = err.$metadata?.httpStatusCode;
  const msg = `${what}: ${err.name ?? 'error'}${status ? ` (HTTP ${status})` : ''}: ${err.message}`;
  if (status === 403 || status === 401) return new BridgeError('EACCES', msg, { status }, { cause: e });
  if (status === 404 && err.name === 'NoSuchBucket') return new BridgeError('ENOENT', msg, { status }, { cause: e });
  // 5xx, throttling, timeouts, resets and other network failures are worth retrying.
  if (status === undefined || status >= 500 || status === 429 || err.name === 'SlowDown' || err.name === 'RequestTimeout') return transientError(msg, e);
  return new BridgeError('EIO', msg, { status }, { cause: e });
}
