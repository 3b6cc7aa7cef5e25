/**
 * NFS through nfs-ganesha (FSAL VFS), one ganesha.nfsd for every export. NFSv4 only unless rpcbind
 * runs (v3 registers with rpcbind at start-up; none runs in the appliance by default). Each export
 * admits only its configured clients and squashes root by default. Ganesha has no reload without
 * D-Bus here, so a changed export list restarts it (NFS exports carry no secrets: they change only
 * on a config reload that changes them).
 */
import { existsSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { BridgeError } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { SupervisedServer, Supervisor, waitForPort } from './supervisor.js';
import { render } from './templates.js';

export interface NfsExport {
  name: string;
  path: string;
  readOnly: boolean;
  clients: string[];
  squash: 'root' | 'all' | 'none';
}

export interface GaneshaOptions {
  dir: string;
  address: string;
  port: number;
  log: Logger;
  /** Offer NFSv3 too (needs a running rpcbind). */
  v3?: boolean;
}

const SQUASH = { root: 'root_squash', all: 'all_squash', none: 'no_root_squash' } as const;

/** The NFS path of an export: /NAME. */
export function nfsPseudoPath(name: string): string {
  return `/${name}`;
}

export class GaneshaServer extends SupervisedServer {
  private readonly exports = new Map<string, NfsExport>();
  protected readonly supervisor: Supervisor;
  readonly confPath: string;

  constructor(private readonly o: GaneshaOptions) {
    super();
    this.confPath = join(o.dir, 'ganesha.conf');
    this.supervisor = new Supervisor({
      name: 'ganesha',
      command: 'ganesha.nfsd',
      args: ['-F', '-f', this.confPath, '-L', join(o.dir, 'ganesha.log'), '-p', join(o.dir, 'ganesha.pid')],
      pidFile: join(o.dir, 'server.pid'),
      log: o.log,
      ready: () => waitForPort(o.address, o.port, 30_000),
    });
  }

  putExport(e: NfsExport): void {
    for (const c of e.clients) if (/[,;{}"\s]/.test(c)) throw new BridgeError('EINVAL', `NFS export "${e.name}": bad client "${c}"`);
    this.exports.set(e.name, e);
  }

  private async writeConfig(): Promise<void> {
    await fsp.mkdir(join(this.o.dir, 'recovery'), { recursive: true, mode: 0o700 });
    const plugins = ['/usr/lib/x86_64-linux-gnu/ganesha', '/usr/lib/aarch64-linux-gnu/ganesha', '/usr/lib64/ganesha', '/usr/lib/ganesha'].find((d) =>
      existsSync(join(d, 'libfsalvfs.so')),
    );
    if (!plugins) throw new BridgeError('ENOENT', "nfs-ganesha's VFS backend (libfsalvfs.so) is not installed: install nfs-ganesha-vfs");
    const text = await render('ganesha.conf.tmpl', {
      port: this.o.port,
      address: this.o.address,
      protocols: this.o.v3 ? '3, 4' : '4',
      v3: this.o.v3 ? 'true' : 'false',
      pluginsDir: plugins,
      dir: this.o.dir,
      exports: [...this.exports.values()].map((e, i) => ({
        id: i + 1,
        path: e.path,
        pseudo: nfsPseudoPath(e.name),
        squash: SQUASH[e.squash],
        clients: e.clients.join(', '),
        access: e.readOnly ? 'RO' : 'RW',
      })),
    });
    await fsp.writeFile(this.confPath, text, { mode: 0o600 });
  }

  async start(): Promise<void> {
    await fsp.mkdir(this.o.dir, { recursive: true, mode: 0o700 });
    await this.writeConfig();
    await this.supervisor.start();
  }

  /** Applies a changed export list: ganesha re-reads exports only on restart. */
  async restart(): Promise<void> {
    await this.supervisor.stop();
    await this.start();
  }

  killServer(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.supervisor.signal(signal);
  }

  async stop(): Promise<void> {
    await this.supervisor.stop();
  }
}
