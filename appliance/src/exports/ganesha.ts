/**
 * NFS through nfs-ganesha (FSAL VFS), one ganesha.nfsd for every export. NFSv4, and v3 when asked
 * (the agent does so when rpcbind is available: rpcbind.ts). Each export admits only its configured
 * clients and squashes root by default. Ganesha has no reload without D-Bus here, so a changed
 * export list restarts it (NFS exports carry no secrets: they change only on a config reload that
 * changes them).
 *
 * Ganesha keeps running when it cannot create an export (a path it cannot resolve, a filesystem
 * FSAL VFS does not handle): each start reads ganesha.log, where it logs "Export N created at pseudo
 * (/NAME)" or "Could not create export for (/NAME) to (PATH)" with the reason just before, so that
 * every export's health is its own.
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
  /** Offer NFSv3 too (needs a running rpcbind), with MOUNT on this port. */
  v3?: { mountPort: number };
}

/** What ganesha made of one export at its last start. */
export type ExportResult = { created: true } | { created: false; error: string };

const SQUASH = { root: 'root_squash', all: 'all_squash', none: 'no_root_squash' } as const;

/** The NFS path of an export: /NAME. */
export function nfsPseudoPath(name: string): string {
  return `/${name}`;
}

export class GaneshaServer extends SupervisedServer {
  private readonly exports = new Map<string, NfsExport>();
  protected readonly supervisor: Supervisor;
  readonly confPath: string;
  readonly logPath: string;
  private results = new Map<string, ExportResult>();

  constructor(private readonly o: GaneshaOptions) {
    super();
    this.confPath = join(o.dir, 'ganesha.conf');
    this.logPath = join(o.dir, 'ganesha.log');
    this.supervisor = new Supervisor({
      name: 'ganesha',
      command: 'ganesha.nfsd',
      args: ['-F', '-f', this.confPath, '-L', this.logPath, '-p', join(o.dir, 'ganesha.pid')],
      pidFile: join(o.dir, 'server.pid'),
      log: o.log,
      ready: async () => {
        this.results = new Map();
        // Exports are created before ganesha listens: once the port answers, the log has them all.
        await waitForPort(o.address, o.port, 30_000);
        this.results = exportResults(await fsp.readFile(this.logPath, 'utf8').catch(() => ''), [...this.exports.values()]);
        for (const [name, r] of this.results) if (!r.created) o.log.error('NFS export not created by ganesha', { export: name, error: r.error });
      },
    });
  }

  /** The NFS versions offered. */
  get versions(): number[] {
    return this.o.v3 ? [3, 4] : [4];
  }

  /** How ganesha's last start went for this export; undefined while it is (re)starting. */
  exportResult(name: string): ExportResult | undefined {
    return this.supervisor.health === 'ok' ? this.results.get(name) : undefined;
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
      v3: !!this.o.v3,
      mountPort: this.o.v3?.mountPort ?? 0,
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
    // A fresh log per start: the export results are read from it (ganesha appends).
    await fsp.writeFile(this.logPath, '', { mode: 0o600 });
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

/**
 * Each export's fate from a ganesha log of one start: "Export N created at pseudo (/NAME) ..." or
 * "Could not create export for (/NAME) to (PATH)", whose reason ganesha logged on the CRIT lines just
 * before (e.g. "resolve_posix_filesystem(PATH) returned No such file or directory (2)").
 */
export function exportResults(log: string, exports: NfsExport[]): Map<string, ExportResult> {
  const lines = log.split('\n');
  // "DATE : epoch E : HOST : nfs-ganesha-PID[main] FUNCTION :COMPONENT :LEVEL :TEXT"
  const text = (l: string): string => /:[A-Z0-9 ]+ :(?:CRIT|MAJ|WARN|EVENT|INFO) :(.*)$/.exec(l)?.[1]?.trim() ?? l.trim();
  const out = new Map<string, ExportResult>();
  for (const e of exports) {
    const pseudo = nfsPseudoPath(e.name);
    if (lines.some((l) => l.includes(`created at pseudo (${pseudo})`))) {
      out.set(e.name, { created: true });
      continue;
    }
    const at = lines.findIndex((l) => l.includes(`Could not create export for (${pseudo})`));
    if (at < 0) {
      out.set(e.name, { created: false, error: `ganesha did not create the export (no line for ${pseudo} in its log)` });
      continue;
    }
    // The reasons: the CRIT/MAJ lines since the previous export's lines that name its path.
    const reasons: string[] = [];
    for (let i = at - 1; i >= 0 && reasons.length < 3; i--) {
      const l = lines[i]!;
      if (/created at pseudo|Could not create export|client_commit/.test(l)) break;
      if (/:(CRIT|MAJ) :/.test(l) && l.includes(e.path)) reasons.unshift(text(l));
    }
    out.set(e.name, { created: false, error: `ganesha could not create the export of ${e.path}${reasons.length ? `: ${reasons.join('; ')}` : ''}` });
  }
  return out;
}
