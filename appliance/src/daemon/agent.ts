/**
 * The agent daemon: sources → stages → exports, kept running.
 *
 * Everything is (re)built by `reconcile()`, which runs one at a time and walks the config in order:
 * a component is built once what it comes from is up and the secrets it needs have arrived; a failing
 * component is marked failed with its reason and only what depends on it stays down. Pushed secrets
 * and reloads call reconcile() again, so a pending export starts as soon as its secret arrives, and a
 * changed password or CHAP secret is applied without touching unaffected exports.
 *
 * One server per protocol: smbd for every share, ganesha.nfsd for every NFS export, tgtd for every
 * iSCSI target, each under a Supervisor. stop() undoes everything in reverse order.
 */
import { promises as fsp } from 'node:fs';
import type { AgentConfig, ExportConfig, SourceConfig, StageConfig } from '../../../shared/src/config.js';
import { parseAgentConfig } from '../../../shared/src/config.js';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import type { AgentStatus, ComponentStatus, Endpoint, ExportStatus, Health } from '../../../shared/src/protocol.js';
import { VERSION } from '../../../shared/src/version.js';
import { GaneshaServer, nfsPseudoPath, type NfsExport } from '../exports/ganesha.js';
import { RpcbindServer } from '../exports/rpcbind.js';
import { SambaServer } from '../exports/samba.js';
import { TgtServer, type IscsiTarget } from '../exports/tgt.js';
import { probeXattr } from '../exports/xattr.js';
import { claimRuntime, clearLeftovers, runtimeLayout, type RuntimeLayout } from './runtime.js';
import { describeRef, Secrets } from './secrets.js';
import { blockPath, buildSource, buildStage, closeValue, prefersDirectIo, resolveDiskPath, type BuildContext, type Value } from './values.js';

interface Component {
  role: 'source' | 'stage';
  config: SourceConfig | StageConfig;
  health: Health;
  error?: string;
  value?: Value;
  /** Waiting for a pushed secret (itself or what it comes from): does not hold back readiness. */
  pending?: boolean;
  details: Record<string, unknown>;
}

interface ExportState {
  config: ExportConfig;
  /** ok once handed to its server; the server's own health is folded in by status(). */
  health: Health;
  error?: string;
  /** True while waiting for a pushed secret (does not hold back readiness). */
  pending?: boolean;
  details: Record<string, unknown>;
}

export interface AgentOptions {
  log: Logger;
  /** The config file, for reload. */
  configPath?: string;
  env?: NodeJS.ProcessEnv;
  /** The appliance image's version stamp, shown in status. */
  imageVersion?: string;
}

export const DEFAULT_IQN_PREFIX = 'iqn.2026-11.org.bridge';
/** NFSv3's MOUNT port when the config names none (the port Linux's mountd uses by convention). */
export const DEFAULT_NFS_MOUNT_PORT = 20048;

export class Agent {
  readonly layout: RuntimeLayout;
  readonly secrets: Secrets;
  private components: Component[] = [];
  private exports: ExportState[] = [];
  private samba: SambaServer | undefined;
  private ganesha: GaneshaServer | undefined;
  /** For NFSv3: ours, or the machine's rpcbind (then we leave it alone). */
  private rpcbind: RpcbindServer | undefined;
  private tgt: TgtServer | undefined;
  private nfsApplied = '';
  /** Passwords last given to smbpasswd, to re-run it only for users whose password changed. */
  private readonly smbPasswords = new Map<string, string>();
  private queue: Promise<unknown> = Promise.resolve();
  private started = false;
  private stopping = false;
  private readonly startedAt = Date.now();
  private readonly log: Logger;

  constructor(
    private config: AgentConfig,
    private readonly o: AgentOptions,
  ) {
    this.log = o.log.child({ component: 'agent' });
    this.layout = runtimeLayout(config.runtimeDir);
    this.secrets = new Secrets(o.env ?? process.env);
    this.components = [
      ...config.sources.map((c) => ({ role: 'source' as const, config: c, health: 'starting' as Health, details: {} })),
      ...config.stages.map((c) => ({ role: 'stage' as const, config: c, health: 'starting' as Health, details: {} })),
    ];
    this.exports = config.exports.map((c) => ({ config: c, health: 'starting', details: {} }));
  }

  /**
   * Claims the runtime directory (refusing when another agent owns it), runs `afterClaim` (the control
   * socket), clears a killed agent's leftovers, and builds everything it can.
   */
  async start(afterClaim?: () => Promise<void>): Promise<void> {
    await claimRuntime(this.layout);
    if (afterClaim) await afterClaim();
    const disks = await Promise.all(
      this.config.sources.filter((s) => s.kind === 'disk').map((s) => resolveDiskPath((s as { path: string }).path).catch(() => undefined)),
    );
    // In the queue, so that a secret pushed over the (already open) control socket cannot start a
    // reconcile whose fresh mounts the leftover sweep would then take for a dead agent's.
    await this.exclusive(async () => {
      await clearLeftovers(
        this.layout,
        disks.filter((d): d is string => !!d),
        this.log,
      );
      for (const d of [this.layout.blocks, this.layout.trees]) await fsp.mkdir(d, { recursive: true, mode: 0o700 });
    });
    await this.reconcile();
    this.started = true;
    const s = this.status();
    this.log.info(s.ready ? 'agent ready' : 'agent started; some exports are still starting', {
      exports: s.exports.map((e) => `${e.name}:${e.health}`).join(' '),
    });
  }

  /** Runs fn after every earlier reconcile/credential change: one change at a time. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn, fn);
    this.queue = p.catch(() => undefined);
    return p;
  }

  reconcile(): Promise<void> {
    return this.exclusive(async () => {
      if (this.stopping) return;
      for (const c of this.components) if (c.health === 'starting') await this.buildComponent(c);
      for (const e of this.exports) if (e.health === 'starting') await this.prepareExport(e);
      await this.startServers();
    });
  }

  private find(name: string): Component | undefined {
    return this.components.find((c) => c.config.name === name);
  }

  /** Why `from` is not usable yet: undefined when it is up; failed:... when it never will be. */
  private blockedBy(from: string): { failed: boolean; pending: boolean; why: string } | undefined {
    const dep = this.find(from);
    if (!dep) return { failed: true, pending: false, why: `"${from}" does not exist` };
    if (dep.health === 'ok' && dep.value) return undefined;
    if (dep.health === 'failed') return { failed: true, pending: false, why: `"${from}" failed` };
    return { failed: false, pending: dep.pending === true, why: `waiting for "${from}"${dep.error ? ` (${dep.error})` : ''}` };
  }

  private async buildComponent(c: Component): Promise<void> {
    const what = `${c.role} "${c.config.name}"`;
    try {
      if (c.role === 'source') {
        const s = c.config as SourceConfig;
        const ctx: BuildContext = { runtimeTrees: this.layout.trees, log: this.log };
        if (s.kind === 'store') {
          // Every secret the store names must have arrived before it opens.
          const wanted = { passphrase: s.passphrase, accessKeyId: s.accessKeyId, secretAccessKey: s.secretAccessKey };
          const got: Record<string, string> = {};
          for (const [key, ref] of Object.entries(wanted)) {
            if (!ref) continue;
            const value = await this.secrets.resolve(ref, `${what} ${key}`);
            if (value === undefined) {
              c.error = `waiting for ${describeRef(ref)}`;
              c.pending = true;
              return;
            }
            got[key] = value;
          }
          if (got.passphrase !== undefined) ctx.passphrase = got.passphrase;
          if (got.accessKeyId !== undefined && got.secretAccessKey !== undefined) {
            ctx.credentials = { accessKeyId: got.accessKeyId, secretAccessKey: got.secretAccessKey };
          }
        }
        const built = await buildSource(s, ctx);
        c.value = built.value;
        c.details = built.details;
      } else {
        const s = c.config as StageConfig;
        const blocked = this.blockedBy(s.from);
        if (blocked) {
          c.error = blocked.why;
          c.pending = blocked.pending;
          if (blocked.failed) c.health = 'failed';
          return;
        }
        const from = this.find(s.from)!;
        const built = await buildStage(s, from.value!, s.from, { runtimeTrees: this.layout.trees, runtimeBlocks: this.layout.blocks, log: this.log });
        c.value = built.value;
        c.details = built.details;
      }
      c.health = 'ok';
      c.pending = false;
      delete c.error;
      this.log.info(`${c.role} up`, { name: c.config.name, kind: c.config.kind });
    } catch (e) {
      c.health = 'failed';
      c.error = errorMessage(e).startsWith(what) ? errorMessage(e) : `${what}: ${errorMessage(e)}`;
      this.log.error(`${c.role} failed`, { name: c.config.name, kind: c.config.kind, error: c.error });
    }
  }

  /** Hands an export to its server once its value is up and its secrets have arrived. */
  private async prepareExport(e: ExportState): Promise<void> {
    const x = e.config;
    const what = `${x.kind} export "${x.name}"`;
    const blocked = this.blockedBy(x.from);
    if (blocked) {
      e.error = blocked.why;
      e.pending = blocked.pending;
      if (blocked.failed) e.health = 'failed';
      return;
    }
    const value = this.find(x.from)!.value!;
    try {
      if (x.kind === 'smb' || x.kind === 'nfs') {
        if (value.kind !== 'tree') throw new BridgeError('CONFIG', `${what}: "${x.from}" is a block device; SMB and NFS export trees (add a mount stage)`);
      } else if (value.kind !== 'block') {
        const disk = this.find(x.from)?.config.kind === 'disk';
        throw new BridgeError(
          'CONFIG',
          `${what}: "${x.from}" is a tree; iSCSI exports block devices (${disk ? 'set "raw": true on the disk source to export the disk itself, or ' : ''}add a fat32 stage)`,
        );
      }
      if (x.kind === 'smb') await this.prepareSmb(e, value as Extract<Value, { kind: 'tree' }>);
      else if (x.kind === 'nfs') await this.prepareNfs(e, value as Extract<Value, { kind: 'tree' }>);
      else await this.prepareIscsi(e, value as Extract<Value, { kind: 'block' }>);
    } catch (err) {
      e.health = 'failed';
      e.error = errorMessage(err).startsWith(what) ? errorMessage(err) : `${what}: ${errorMessage(err)}`;
      this.log.error('export failed', { name: x.name, error: e.error });
    }
  }

  private smbServer(): SambaServer {
    this.samba ??= new SambaServer({ dir: this.layout.server('smb'), address: this.config.listen.address, port: this.config.listen.smbPort, log: this.log });
    return this.samba;
  }

  /** Every user's password, or the names of the pending secrets. */
  private async smbPasswordsFor(users: string[], what: string): Promise<{ passwords: Map<string, string>; pending: string[] }> {
    const passwords = new Map<string, string>();
    const pending: string[] = [];
    for (const u of users) {
      const user = this.config.users.find((x) => x.name === u);
      if (!user) throw new BridgeError('CONFIG', `${what}: user "${u}" is not defined`);
      const pw = await this.secrets.resolve(user.password, `user "${u}" password`);
      if (pw === undefined) pending.push(describeRef(user.password));
      else passwords.set(u, pw);
    }
    return { passwords, pending };
  }

  private async prepareSmb(e: ExportState, value: Extract<Value, { kind: 'tree' }>): Promise<void> {
    const x = e.config as Extract<ExportConfig, { kind: 'smb' }>;
    const { passwords, pending } = await this.smbPasswordsFor(x.users, `smb export "${x.name}"`);
    if (pending.length) {
      e.pending = true;
      e.error = `waiting for ${pending.join(', ')}`;
      return;
    }
    const samba = this.smbServer();
    for (const [u, pw] of passwords) {
      if (this.smbPasswords.get(u) === pw) continue;
      await samba.setUser(u, pw);
      this.smbPasswords.set(u, pw);
    }
    const readOnly = x.readOnly || value.tree.readOnly;
    const xattr = await probeXattr(value.tree.path, readOnly);
    if (!xattr.supported) this.log.warn('streams_xattr off for this share: macOS metadata goes to AppleDouble files', { share: x.name, reason: xattr.reason });
    await samba.putShare({
      name: x.name,
      path: value.tree.path,
      readOnly,
      users: x.users,
      ...(x.hostsAllow ? { hostsAllow: x.hostsAllow } : {}),
      streamsXattr: xattr.supported,
      xattrReason: xattr.reason,
    });
    e.health = 'ok';
    e.pending = false;
    delete e.error;
    e.details = { path: value.tree.path, readOnly, users: x.users, streamsXattr: xattr.supported, xattr: xattr.reason };
  }

  /** The NFS server, offering v3 too when rpcbind is available (NFSv3 needs it at ganesha's start-up). */
  private async nfsServer(): Promise<GaneshaServer> {
    if (this.ganesha) return this.ganesha;
    const { address, nfsPort, nfsMountPort = DEFAULT_NFS_MOUNT_PORT } = this.config.listen;
    const dir = this.layout.server('nfs');
    const v3 = await RpcbindServer.available();
    if (v3)
      this.rpcbind = new RpcbindServer({
        dir,
        address,
        log: this.log,
        // A restarted rpcbind forgot ganesha's registrations: restart ganesha so that it registers again.
        onRestart: () => void this.exclusive(() => this.ganesha?.restart() ?? Promise.resolve()).catch(() => undefined),
      });
    else this.log.warn('rpcbind is not installed: NFS is offered as v4 only');
    this.ganesha = new GaneshaServer({ dir, address, port: nfsPort, log: this.log, ...(v3 ? { v3: { mountPort: nfsMountPort } } : {}) });
    return this.ganesha;
  }

  private async prepareNfs(e: ExportState, value: Extract<Value, { kind: 'tree' }>): Promise<void> {
    const x = e.config as Extract<ExportConfig, { kind: 'nfs' }>;
    const readOnly = x.readOnly || value.tree.readOnly;
    const ganesha = await this.nfsServer();
    const exp: NfsExport = { name: x.name, path: value.tree.path, readOnly, clients: x.clients, squash: x.squash };
    ganesha.putExport(exp);
    e.health = 'ok';
    delete e.error;
    e.details = { path: value.tree.path, readOnly, clients: x.clients, squash: x.squash, versions: ganesha.versions };
  }

  private iqnOf(x: Extract<ExportConfig, { kind: 'iscsi' }>): string {
    return x.iqn ?? `${DEFAULT_IQN_PREFIX}:${x.name.toLowerCase()}`;
  }

  /** The target with its current secrets, or the pending secrets' descriptions. */
  private async iscsiTarget(x: Extract<ExportConfig, { kind: 'iscsi' }>, file: string, readOnly: boolean, directIo: boolean): Promise<IscsiTarget | string[]> {
    const what = `iscsi export "${x.name}"`;
    const secret = await this.secrets.resolve(x.chap.secret, `${what} CHAP secret`);
    const mutual = x.mutualChap ? await this.secrets.resolve(x.mutualChap.secret, `${what} mutual CHAP secret`) : undefined;
    const pending = [
      ...(secret === undefined ? [describeRef(x.chap.secret)] : []),
      ...(x.mutualChap && mutual === undefined ? [describeRef(x.mutualChap.secret)] : []),
    ];
    if (pending.length) return pending;
    return {
      iqn: this.iqnOf(x),
      file,
      readOnly,
      directIo,
      chap: { user: x.chap.user, secret: secret! },
      ...(x.mutualChap ? { mutualChap: { user: x.mutualChap.user, secret: mutual! } } : {}),
      ...(x.initiators ? { initiators: x.initiators } : {}),
    };
  }

  private async prepareIscsi(e: ExportState, value: Extract<Value, { kind: 'block' }>): Promise<void> {
    const x = e.config as Extract<ExportConfig, { kind: 'iscsi' }>;
    const readOnly = x.readOnly || !value.device.capabilities.writable;
    const file = await blockPath(value, x.from, this.layout.blocks, this.log);
    const directIo = prefersDirectIo(value);
    const target = await this.iscsiTarget(x, file, readOnly, directIo);
    if (Array.isArray(target)) {
      e.pending = true;
      e.error = `waiting for ${target.join(', ')}`;
      return;
    }
    this.tgt ??= new TgtServer({ dir: this.layout.server('iscsi'), address: this.config.listen.address, port: this.config.listen.iscsiPort, log: this.log });
    await this.tgt.putTarget(target);
    e.health = 'ok';
    e.pending = false;
    delete e.error;
    e.details = { file, size: value.device.size, readOnly, directIo, chapUser: x.chap.user, mutualChap: !!x.mutualChap, initiators: x.initiators ?? 'any' };
  }

  /** Starts each protocol's server once it has something to serve; restarts ganesha when its exports changed. */
  private async startServers(): Promise<void> {
    const start = async (name: string, server: { health: Health; start(): Promise<void> } | undefined): Promise<void> => {
      if (!server || server.health !== 'stopped') return;
      await server.start().catch((e: unknown) => this.log.error(`${name} did not start`, { error: errorMessage(e) }));
    };
    if (this.samba && this.exports.some((e) => e.config.kind === 'smb' && e.health === 'ok')) await start('smbd', this.samba);
    if (this.tgt) await start('tgtd', this.tgt);
    if (this.ganesha) {
      if (this.rpcbind) await start('rpcbind', this.rpcbind);
      const applied = JSON.stringify(this.exports.filter((e) => e.config.kind === 'nfs' && e.health === 'ok').map((e) => e.config.name));
      if (this.ganesha.health === 'stopped') await start('ganesha', this.ganesha);
      else if (applied !== this.nfsApplied)
        await this.ganesha.restart().catch((e: unknown) => this.log.error('ganesha did not restart', { error: errorMessage(e) }));
      this.nfsApplied = applied;
    }
  }

  /** Re-applies every credential of running exports: changed passwords, changed CHAP secrets. */
  private refreshCredentials(): Promise<void> {
    return this.exclusive(async () => {
      for (const e of this.exports) {
        if (e.health !== 'ok') continue;
        const x = e.config;
        try {
          if (x.kind === 'smb') {
            const { passwords } = await this.smbPasswordsFor(x.users, `smb export "${x.name}"`);
            for (const [u, pw] of passwords) {
              if (this.smbPasswords.get(u) === pw) continue;
              await this.smbServer().setUser(u, pw);
              this.smbPasswords.set(u, pw);
            }
          } else if (x.kind === 'iscsi' && this.tgt) {
            const value = this.find(x.from)?.value;
            if (value?.kind !== 'block') continue;
            const file = value.direct ?? value.file?.path;
            if (!file) continue;
            const target = await this.iscsiTarget(x, file, e.details['readOnly'] === true, prefersDirectIo(value));
            if (!Array.isArray(target)) await this.tgt.putTarget(target);
          }
        } catch (err) {
          this.log.error('cannot apply new credentials', { export: x.name, error: errorMessage(err) });
        }
      }
    });
  }

  async putSecret(name: string, value: string): Promise<{ changed: boolean }> {
    const changed = this.secrets.put(name, value);
    this.log.info('secret received', { name, changed });
    if (changed) {
      await this.refreshCredentials();
      await this.reconcile();
    }
    return { changed };
  }

  /** Sets the cache limit of one store source, or of every store source. */
  async setCacheSize(bytes: number, source?: string): Promise<{ sources: string[] }> {
    const targets = this.components.filter((c) => c.role === 'source' && c.config.kind === 'store' && (!source || c.config.name === source));
    if (source && !targets.length) {
      const c = this.find(source);
      throw new BridgeError(
        c ? 'EINVAL' : 'ENOENT',
        c ? `source "${source}" is a ${c.config.kind}, not a store: it has no cache` : `no source is named "${source}"`,
      );
    }
    const done: string[] = [];
    for (const c of targets) {
      const v = c.value;
      if (v?.kind !== 'block' || !v.store) continue;
      await v.store.setCacheLimit(bytes);
      c.details['cacheSize'] = bytes;
      done.push(c.config.name);
    }
    this.log.info('cache size set', { bytes, sources: done.join(',') });
    return { sources: done };
  }

  /**
   * Re-reads the config file: applies new credentials (user passwords, CHAP secrets) and store cache
   * sizes without touching unaffected exports. Other changes need a restart and are reported.
   */
  async reload(): Promise<{ applied: string[]; restartRequired: string[] }> {
    if (!this.o.configPath) throw new BridgeError('EINVAL', 'the agent was started without a config file: nothing to reload');
    const text = await fsp.readFile(this.o.configPath, 'utf8');
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (e) {
      throw new BridgeError('CONFIG', `${this.o.configPath}: not JSON: ${errorMessage(e)}`);
    }
    const next = parseAgentConfig(raw, this.o.configPath);
    const restartRequired: string[] = [];
    const shape = (c: AgentConfig): string =>
      JSON.stringify({
        runtimeDir: c.runtimeDir,
        listen: c.listen,
        sources: c.sources.map((s) => (s.kind === 'store' ? { ...s, cache: undefined } : s)),
        stages: c.stages,
        exports: c.exports.map((x) => (x.kind === 'iscsi' ? { ...x, chap: x.chap.user, mutualChap: x.mutualChap?.user } : x)),
        users: c.users.map((u) => u.name),
      });
    if (shape(next) !== shape(this.config)) restartRequired.push('sources, stages, exports, users or listen changed: restart the agent to apply them');
    const applied: string[] = [];
    // Adopt what can change live: credential references and cache sizes.
    this.config = { ...this.config, users: next.users.filter((u) => this.config.users.some((o) => o.name === u.name)) };
    for (const e of this.exports) {
      const n = next.exports.find((x) => x.name === e.config.name && x.kind === e.config.kind);
      if (n && n.kind === 'iscsi' && e.config.kind === 'iscsi') e.config = { ...e.config, chap: n.chap, ...(n.mutualChap ? { mutualChap: n.mutualChap } : {}) };
    }
    for (const s of next.sources) {
      const c = this.find(s.name);
      if (s.kind === 'store' && c?.config.kind === 'store' && s.cache.size !== c.config.cache.size) {
        await this.setCacheSize(s.cache.size, s.name).catch((e: unknown) => restartRequired.push(errorMessage(e)));
        c.config = { ...c.config, cache: s.cache };
        applied.push(`cache size of "${s.name}"`);
      }
    }
    await this.refreshCredentials();
    await this.reconcile();
    applied.push('credentials');
    this.log.info('config reloaded', { applied: applied.join(', '), restartRequired: restartRequired.length });
    return { applied, restartRequired };
  }

  private endpoint(x: ExportConfig): Endpoint {
    const { address, smbPort, nfsPort, iscsiPort } = this.config.listen;
    if (x.kind === 'smb') return { protocol: 'smb', address, port: smbPort, path: x.name, url: `smb://${address}:${smbPort}/${x.name}` };
    if (x.kind === 'nfs')
      return { protocol: 'nfs', address, port: nfsPort, path: nfsPseudoPath(x.name), url: `nfs://${address}:${nfsPort}${nfsPseudoPath(x.name)}` };
    const iqn = this.iqnOf(x);
    return { protocol: 'iscsi', address, port: iscsiPort, path: iqn, url: `iscsi://${address}:${iscsiPort}/${iqn}/1` };
  }

  private server(kind: ExportConfig['kind']): { health: Health; error: string | undefined; pid: number | undefined; restarts: number } | undefined {
    return kind === 'smb' ? this.samba : kind === 'nfs' ? this.ganesha : this.tgt;
  }

  status(): AgentStatus {
    const component = (c: Component): ComponentStatus => {
      const details = { ...c.details };
      if (c.value?.kind === 'block' && c.value.store) details['store'] = c.value.store.stats();
      if (c.value?.kind === 'block' && c.value.file) {
        details['file'] = c.value.file.path;
        details['flushes'] = c.value.flushes ?? 0;
      }
      if (c.pending) details['pending'] = true;
      return { name: c.config.name, kind: c.config.kind, health: c.health, ...(c.error ? { error: c.error } : {}), details };
    };
    const exports = this.exports.map((e): ExportStatus => {
      let health = e.health;
      let error = e.error;
      const server = this.server(e.config.kind);
      if (health === 'ok' && server && server.health !== 'ok') {
        health = server.health === 'stopped' ? 'starting' : server.health;
        error = server.error ?? error;
      } else if (health === 'ok' && e.config.kind === 'nfs') {
        // ganesha runs, but did it create this export?
        const r = this.ganesha?.exportResult(e.config.name);
        if (!r) health = 'starting';
        else if (!r.created) {
          health = 'failed';
          error = `nfs export "${e.config.name}": ${r.error}`;
        }
      }
      const details: Record<string, unknown> = { ...e.details };
      if (server) details['server'] = { health: server.health, pid: server.pid, restarts: server.restarts };
      if (e.config.kind === 'nfs' && this.rpcbind) details['rpcbind'] = { owned: this.rpcbind.owned, pid: this.rpcbind.pid, health: this.rpcbind.health };
      if (e.pending) details['pending'] = true;
      return { name: e.config.name, kind: e.config.kind, health, ...(error ? { error } : {}), details, endpoint: this.endpoint(e.config) };
    });
    const ready = this.started && !this.stopping && exports.every((e) => e.health !== 'starting' || e.details?.['pending'] === true);
    return {
      version: VERSION,
      ...(this.o.imageVersion ? { imageVersion: this.o.imageVersion } : {}),
      ready,
      pid: process.pid,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      sources: this.components.filter((c) => c.role === 'source').map(component),
      stages: this.components.filter((c) => c.role === 'stage').map(component),
      exports,
    };
  }

  /** For tests and `kill an export server`: the live server of a protocol. */
  serverOf(kind: ExportConfig['kind']): { killServer(sig?: NodeJS.Signals): void; pid: number | undefined } | undefined {
    return kind === 'smb' ? this.samba : kind === 'nfs' ? this.ganesha : this.tgt;
  }

  /** Stops servers, then closes stages and sources in reverse order. Safe to call twice. */
  stop(): Promise<void> {
    this.stopping = true;
    return this.exclusive(async () => {
      const step = async (name: string, fn: () => Promise<void>): Promise<void> => {
        try {
          await fn();
        } catch (e) {
          this.log.error(`stopping ${name} failed`, { error: errorMessage(e) });
        }
      };
      for (const [name, server] of [
        ['tgtd', this.tgt],
        ['ganesha', this.ganesha],
        ['rpcbind', this.rpcbind],
        ['smbd', this.samba],
      ] as const) {
        if (server) await step(name, () => server.stop());
      }
      for (const c of [...this.components].reverse()) {
        const v = c.value;
        if (!v) continue;
        c.value = undefined;
        await step(`${c.role} "${c.config.name}"`, () => closeValue(v));
        c.health = 'stopped';
      }
      for (const e of this.exports) e.health = 'stopped';
      await fsp.rm(this.layout.pidFile, { force: true });
      this.log.info('agent stopped');
    });
  }
}
