/**
 * An NBD server exporting one BlockDevice (docs/nbd.md): Unix socket or loopback TCP, any number of
 * connections (multi-conn), structured replies and base:allocation block status. The device stays
 * the caller's: close() ends the connections (letting requests in flight finish) but does not close it.
 */
import { promises as fsp } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import { logger, type Logger } from '../../../shared/src/logger.js';
import type { BlockDevice } from '../block/device.js';
import { nbdUri, parseNbdAddress, type NbdAddress } from './address.js';
import { BufferPool } from './buffers.js';
import { NbdConnection } from './connection.js';

export interface NbdServeOptions {
  /** Unix socket path, unix:PATH, HOST:PORT or :PORT (see address.ts). */
  address: string;
  /** Export name (default ''; '' always names the export too). */
  name?: string;
  description?: string;
  /** Refuse writes even when the device takes them. */
  readOnly?: boolean;
  log?: Logger;
}

export class NbdServer {
  private readonly connections = new Set<NbdConnection>();
  private readonly pool = new BufferPool();
  private closing: Promise<void> | undefined;

  private readonly server: Server;

  private constructor(
    readonly device: BlockDevice,
    public address: NbdAddress,
    private readonly options: NbdServeOptions,
    private readonly log: Logger,
  ) {
    const exp = { name: options.name ?? '', description: options.description ?? '', device, readOnly: options.readOnly ?? false };
    this.server = createServer({ noDelay: true }, (socket: Socket) => this.accept(socket, exp));
  }

  /** The URI to hand to NBD clients, e.g. nbd+unix:///?socket=/run/x.sock. */
  get uri(): string {
    return nbdUri(this.address, this.options.name ?? '');
  }

  /** Connected clients right now. */
  get clients(): number {
    return this.connections.size;
  }

  static async listen(device: BlockDevice, options: NbdServeOptions): Promise<NbdServer> {
    const address = parseNbdAddress(options.address);
    const self = new NbdServer(device, address, options, (options.log ?? logger()).child({ component: 'nbd' }));
    if (address.kind === 'unix') await clearStaleSocket(address.path);
    const server = self.server;
    await new Promise<void>((res, rej) => {
      server.once('error', (e: NodeJS.ErrnoException) =>
        rej(new BridgeError(e.code === 'EADDRINUSE' ? 'EBUSY' : 'EIO', `cannot listen for NBD on ${options.address}: ${e.message}`, {}, { cause: e })),
      );
      if (address.kind === 'tcp') server.listen({ host: address.host, port: address.port }, () => res());
      else {
        // The socket is born owner-only (bind happens inside listen()), so nobody can connect in between.
        const umask = process.umask(0o177);
        try {
          server.listen({ path: address.path }, () => res());
        } finally {
          process.umask(umask);
        }
      }
    });
    if (address.kind === 'unix') await fsp.chmod(address.path, 0o600);
    else {
      const a = server.address();
      if (a && typeof a === 'object') self.address = { ...address, port: a.port };
    }
    server.on('error', (e) => self.log.error('NBD listener failed', { error: e.message }));
    self.log.info('serving NBD', { uri: self.uri, size: device.size, writable: device.capabilities.writable && !options.readOnly });
    return self;
  }

  private accept(socket: Socket, exp: ConstructorParameters<typeof NbdConnection>[1]): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const conn = new NbdConnection(socket, exp, this.pool, this.log);
    this.connections.add(conn);
    this.log.debug('NBD client connected', { clients: this.connections.size });
    socket.once('close', () => {
      this.connections.delete(conn);
      this.log.debug('NBD client gone', { clients: this.connections.size });
    });
  }

  /** Stops listening, lets requests in flight finish, and closes every connection. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const stopped = new Promise<void>((res) => this.server.close(() => res()));
      await Promise.all([...this.connections].map((c) => c.close()));
      await stopped;
      if (this.address.kind === 'unix') await fsp.rm(this.address.path, { force: true });
      this.log.info('NBD server stopped', { uri: this.uri });
    })();
    return this.closing;
  }
}

/** A socket file left by a killed server is removed; one that still answers is refused. */
async function clearStaleSocket(path: string): Promise<void> {
  const st = await fsp.lstat(path).catch(() => undefined);
  if (!st) return;
  if (!st.isSocket()) throw new BridgeError('EINVAL', `NBD socket path ${path} exists and is not a socket`);
  const live = await new Promise<boolean>((res) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      res(true);
    });
    s.once('error', () => res(false));
  });
  if (live) throw new BridgeError('EBUSY', `NBD socket ${path} is served by another live process`);
  await fsp.rm(path, { force: true }).catch((e: unknown) => {
    throw new BridgeError('EIO', `cannot remove the stale NBD socket ${path}: ${errorMessage(e)}`);
  });
}
