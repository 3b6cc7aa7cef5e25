/**
 * SMB through Samba's smbd. One smbd serves every share; smb.conf is rendered from
 * templates/smb.conf.tmpl into the private runtime directory. Users are Unix accounts without a home or
 * shell plus a tdbsam entry set with `smbpasswd -s` (password on stdin). Adding a share or changing a
 * password does not restart smbd: shares are re-read on SIGHUP, passwords straight from the passdb.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { BridgeError } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { killMatching } from './procs.js';
import { run, tryRun } from './run.js';
import { SupervisedServer, Supervisor, waitForPort } from './supervisor.js';
import { render } from './templates.js';

export interface SmbShare {
  name: string;
  path: string;
  readOnly: boolean;
  users: string[];
  hostsAllow?: string[];
  streamsXattr: boolean;
  xattrReason: string;
}

export interface SambaOptions {
  /** Private directory (0700) for smb.conf, passdb, locks and pid files. */
  dir: string;
  address: string;
  port: number;
  log: Logger;
}

export class SambaServer extends SupervisedServer {
  private readonly shares = new Map<string, SmbShare>();
  protected readonly supervisor: Supervisor;
  readonly confPath: string;
  private started = false;
  private modules: Set<string> | undefined;

  constructor(private readonly o: SambaOptions) {
    super();
    this.confPath = join(o.dir, 'smb.conf');
    this.supervisor = new Supervisor({
      name: 'smbd',
      command: 'smbd',
      args: ['--foreground', '--no-process-group', '--debug-stdout', `--configfile=${this.confPath}`],
      pidFile: join(o.dir, 'server.pid'),
      log: o.log,
      ready: () => waitForPort(o.address, o.port),
    });
  }

  /** The VFS modules this Samba has (Debian ships fruit and streams_xattr in samba-vfs-modules). */
  private async vfsModules(): Promise<Set<string>> {
    if (this.modules) return this.modules;
    const have = new Set<string>();
    try {
      const { stdout } = await run('smbd', ['-b']);
      const dir = /MODULESDIR:\s*(\S+)/.exec(stdout)?.[1];
      if (dir) for (const f of await fsp.readdir(join(dir, 'vfs'))) if (f.endsWith('.so')) have.add(f.slice(0, -3));
    } catch {
      /* no module directory: only the built-in modules */
    }
    for (const m of ['catia', 'fruit', 'streams_xattr'])
      if (!have.has(m)) this.o.log.warn(`Samba VFS module ${m} is missing (install samba-vfs-modules): macOS clients lose it`);
    this.modules = have;
    return have;
  }

  private async writeConfig(): Promise<void> {
    const modules = await this.vfsModules();
    for (const d of ['', 'private', 'lock', 'state', 'cache', 'pid', 'ncalrpc']) await fsp.mkdir(join(this.o.dir, d), { recursive: true, mode: 0o700 });
    const any = this.o.address === '0.0.0.0';
    const text = await render('smb.conf.tmpl', {
      port: this.o.port,
      address: any ? '0.0.0.0/0' : this.o.address,
      bindOnly: any ? 'no' : 'yes',
      dir: this.o.dir,
      shares: [...this.shares.values()].map((s) => ({
        ...s,
        comment: `bridge ${s.readOnly ? 'read-only' : 'read-write'} share`,
        hostsAllow: s.hostsAllow ?? null,
        streamsXattr: s.streamsXattr && modules.has('streams_xattr'),
        xattrReason: modules.has('streams_xattr') ? s.xattrReason : 'streams_xattr is not installed',
        vfsObjects: ['catia', 'fruit', ...(s.streamsXattr ? ['streams_xattr'] : [])].filter((m) => modules.has(m)).join(' '),
      })),
    });
    // Written then renamed, so smbd never reads half a file.
    const tmp = this.confPath + '.tmp';
    await fsp.writeFile(tmp, text, { mode: 0o600 });
    await fsp.rename(tmp, this.confPath);
  }

  /** Creates or updates a user: a Unix account (no home, no shell) and its Samba password. */
  async setUser(name: string, password: string): Promise<void> {
    if (!(await tryRun('id', ['-u', name]))) {
      await run('useradd', ['-M', '-s', '/usr/sbin/nologin', name]).catch((e: unknown) => {
        // Two agents (or a test) may race to create the same account.
        if (!/already exists/.test(String((e as Error).message))) throw e;
      });
    }
    await fsp.mkdir(this.o.dir, { recursive: true, mode: 0o700 });
    if (!this.started) await this.writeConfig();
    await run('smbpasswd', ['-c', this.confPath, '-s', '-a', name], { input: `${password}\n${password}\n` });
    await run('smbpasswd', ['-c', this.confPath, '-e', name]);
    this.o.log.info('smb user set', { user: name });
  }

  /** Adds or replaces a share; a running smbd picks it up on SIGHUP, other shares stay connected. */
  async putShare(share: SmbShare): Promise<void> {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(share.name)) throw new BridgeError('EINVAL', `bad share name "${share.name}"`);
    this.shares.set(share.name, share);
    if (this.started) {
      await this.writeConfig();
      this.supervisor.signal('SIGHUP');
    }
  }

  async start(): Promise<void> {
    await this.writeConfig();
    this.started = true;
    await this.supervisor.start();
  }

  /** Kills smbd's processes (the parent and per-connection children) for the supervision test. */
  killServer(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.supervisor.signal(signal);
  }

  async stop(): Promise<void> {
    this.started = false;
    await this.supervisor.stop();
    // smbd starts samba-dcerpcd and its rpcd_* workers on demand; they outlive smbd for a while.
    const helpers = await killMatching(`--configfile=${this.confPath}`);
    if (helpers.length) this.o.log.debug('stopped Samba helper processes', { pids: helpers.join(',') });
  }
}
