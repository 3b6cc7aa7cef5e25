/**
 * iSCSI through tgt: one tgtd in the foreground, configured over its management socket (control port
 * N: /var/run/tgtd/socket.N, a number unique per tgtd on the machine) by speaking tgtadm's protocol
 * ourselves (tgtadm.ts), so CHAP secrets never appear on a command line. Each target has one LUN whose backing store is a block
 * device's FUSE file (rdwr backing store: SYNCHRONIZE CACHE becomes fdatasync on the file, which our
 * FUSE layer turns into the device's flush). CHAP accounts are global in tgtd and bound per target.
 * Targets can be added, and CHAP secrets changed, while tgtd runs; after a crash of tgtd the
 * supervisor restarts it and every target is configured again.
 *
 * tgtd ignores SIGTERM while targets exist: stop deletes the targets, then the system, then signals.
 */
import { existsSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { tgtadm, TGTD_SOCKET_DIR, type TgtRequest } from './tgtadm.js';
import { SupervisedServer, Supervisor, waitForPort } from './supervisor.js';

export interface IscsiTarget {
  iqn: string;
  /** The backing file (a FUSE block file, or any file/block device). */
  file: string;
  readOnly: boolean;
  /** tgtd opens the backing file with O_DIRECT (bsoflags=direct): its page cache would be a second copy. */
  directIo?: boolean;
  chap: { user: string; secret: string };
  mutualChap?: { user: string; secret: string };
  /** Initiator IQNs allowed to log in; all when absent. */
  initiators?: string[];
}

export interface TgtOptions {
  dir: string;
  address: string;
  port: number;
  log: Logger;
  /** tgtd's management channel number (tgtadm -C); picked free when absent. */
  controlPort?: number;
}

/** tgtd listens on /var/run/tgtd/socket.N: pick an N no other tgtd uses. */
export function freeControlPort(): number {
  for (;;) {
    const n = 1000 + Math.floor(Math.random() * 30000);
    if (!existsSync(`${TGTD_SOCKET_DIR}/socket.${n}`)) return n;
  }
}

export class TgtServer extends SupervisedServer {
  protected readonly supervisor: Supervisor;
  private readonly targets = new Map<string, { tid: number; target: IscsiTarget }>();
  private nextTid = 1;
  readonly controlPort: number;
  private accounts = new Map<string, string>();
  private serial: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: TgtOptions) {
    super();
    this.controlPort = o.controlPort ?? freeControlPort();
    this.supervisor = new Supervisor({
      name: 'tgtd',
      command: 'tgtd',
      args: ['-f', '-C', String(this.controlPort), '--iscsi', `portal=${o.address}:${o.port}`],
      pidFile: join(o.dir, 'server.pid'),
      log: o.log,
      ready: async () => {
        await waitForPort(o.address, o.port);
        // A fresh tgtd knows nothing: configure every target again (also after a restart).
        this.accounts = new Map();
        for (const t of this.targets.values()) await this.configure(t.tid, t.target);
      },
      beforeStop: () => this.deleteAll(),
    });
  }

  private adm(r: TgtRequest): Promise<string> {
    return tgtadm(this.controlPort, r);
  }

  /** tgtadm calls one at a time: tgtd's management channel is not meant for concurrent edits. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.serial.then(fn, fn);
    this.serial = p.catch(() => undefined);
    return p;
  }

  private async ensureAccount(user: string, secret: string): Promise<void> {
    const known = this.accounts.get(user);
    if (known === secret) return;
    if (known !== undefined) await this.adm({ mode: 'account', op: 'delete', params: [['user', user]] });
    await this.adm({
      mode: 'account',
      op: 'new',
      params: [
        ['user', user],
        ['password', secret],
      ],
    });
    this.accounts.set(user, secret);
  }

  private async configure(tid: number, t: IscsiTarget): Promise<void> {
    await this.adm({ mode: 'target', op: 'new', tid, params: [['targetname', t.iqn]] });
    await this.adm({
      mode: 'logicalunit',
      op: 'new',
      tid,
      lun: 1,
      params: [['path', t.file], ['bstype', 'rdwr'], ...(t.directIo ? [['bsoflags', 'direct'] as [string, string]] : [])],
    });
    if (t.readOnly) await this.adm({ mode: 'logicalunit', op: 'update', tid, lun: 1, targetOps: 'readonly=1' });
    await this.ensureAccount(t.chap.user, t.chap.secret);
    await this.adm({ mode: 'account', op: 'bind', tid, params: [['user', t.chap.user]] });
    if (t.mutualChap) {
      await this.ensureAccount(t.mutualChap.user, t.mutualChap.secret);
      await this.adm({ mode: 'account', op: 'bind', tid, outgoing: true, params: [['user', t.mutualChap.user]] });
    }
    if (t.initiators?.length) {
      for (const name of t.initiators) await this.adm({ mode: 'target', op: 'bind', tid, params: [['initiator-name', name]] });
    } else {
      await this.adm({ mode: 'target', op: 'bind', tid, params: [['initiator-address', 'ALL']] });
    }
    this.o.log.info('iscsi target configured', {
      iqn: t.iqn,
      tid,
      file: t.file,
      readOnly: t.readOnly,
      directIo: !!t.directIo,
      initiators: t.initiators ?? 'any',
    });
  }

  private async unconfigure(tid: number): Promise<void> {
    await this.adm({ mode: 'target', op: 'delete', tid, force: true });
  }

  /** Adds a target, or replaces one with the same IQN (a changed CHAP secret); others are untouched. */
  putTarget(t: IscsiTarget): Promise<void> {
    return this.exclusive(async () => {
      const old = this.targets.get(t.iqn);
      const tid = old?.tid ?? this.nextTid++;
      if (old && this.supervisor.health === 'ok') {
        const same = JSON.stringify(old.target) === JSON.stringify(t);
        if (same) return;
        await this.unconfigure(tid);
      }
      this.targets.set(t.iqn, { tid, target: t });
      if (this.supervisor.health === 'ok') await this.configure(tid, t);
    });
  }

  async start(): Promise<void> {
    await fsp.mkdir(this.o.dir, { recursive: true, mode: 0o700 });
    await fsp.mkdir(TGTD_SOCKET_DIR, { recursive: true });
    await this.exclusive(() => this.supervisor.start());
  }

  private async deleteAll(): Promise<void> {
    for (const { tid } of this.targets.values()) {
      await this.unconfigure(tid).catch((e: unknown) => this.o.log.warn('cannot delete target', { tid, error: errorMessage(e) }));
    }
    await this.adm({ mode: 'system', op: 'delete' }).catch(() => undefined);
  }

  killServer(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.supervisor.signal(signal);
  }

  async stop(): Promise<void> {
    await this.exclusive(() => this.supervisor.stop());
  }
}

/** Deletes a stray tgtd's targets so that it obeys SIGTERM (used for leftovers of a killed agent). */
export async function stopStrayTgtd(controlPort: number): Promise<void> {
  const shown = await tgtadm(controlPort, { mode: 'target', op: 'show' }, 10_000).catch(() => '');
  for (const m of shown.matchAll(/^Target (\d+):/gm))
    await tgtadm(controlPort, { mode: 'target', op: 'delete', tid: Number(m[1]), force: true }, 10_000).catch(() => undefined);
  await tgtadm(controlPort, { mode: 'system', op: 'delete' }, 10_000).catch(() => undefined);
}

export function checkIqn(iqn: string): void {
  if (!/^iqn\.\d{4}-\d{2}\.[^\s]+$/.test(iqn)) throw new BridgeError('EINVAL', `"${iqn}" is not an iSCSI qualified name`);
}
