/**
 * rpcbind for NFSv3: ganesha registers NFS v3 and MOUNT with it at start-up and exits when it cannot
 * ("Cannot register NFS V3 on TCP"), and v3 clients ask it for those ports. One rpcbind per machine
 * (port 111, /run/rpcbind.sock): when one already answers we use it and leave it alone; else we run
 * `rpcbind -f` under a Supervisor.
 *
 * Listening: rpcbind's TCP sockets always take every address; `-h ADDR` restricts only its UDP
 * sockets, and with any -h it adds 127.0.0.1 and ::1 by itself. Giving it a loopback address that it
 * adds anyway binds that address twice, and rpcbind 1.2.6 (Debian 12) then crashes with a double
 * free in its error path (freeaddrinfo after EADDRINUSE; seen with gdb and strace) — that is the
 * "`rpcbind -h 127.0.0.1` crashes" of the dev machine. So: 0.0.0.0 → no -h; a loopback address →
 * `-h 127.0.0.2` (UDP on loopback addresses only: 127.0.0.2 plus the 127.0.0.1 and ::1 it adds);
 * any other address → `-h ADDR`.
 */
import { constants, promises as fsp } from 'node:fs';
import { delimiter, join } from 'node:path';
import { SupervisedServer, Supervisor, waitForPort } from './supervisor.js';
import type { Logger } from '../../../shared/src/logger.js';

export const RPCBIND_PORT = 111;

/** rpcbind's arguments for a listen address (see above for why never -h 127.0.0.1). */
export function rpcbindArgs(address: string): string[] {
  if (address === '0.0.0.0' || address === '::') return ['-f'];
  if (address.startsWith('127.') || address === '::1' || address === 'localhost') return ['-f', '-h', '127.0.0.2'];
  return ['-f', '-h', address];
}

/** True when an rpcbind answers on this machine. */
export async function rpcbindRunning(): Promise<boolean> {
  return waitForPort('127.0.0.1', RPCBIND_PORT, 0).then(
    () => true,
    () => false,
  );
}

/** Whether `cmd` is an executable on PATH (found without running it: rpcbind has no harmless flag). */
async function onPath(cmd: string): Promise<boolean> {
  for (const d of (process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    if (
      d &&
      (await fsp.access(join(d, cmd), constants.X_OK).then(
        () => true,
        () => false,
      ))
    )
      return true;
  }
  return false;
}

export interface RpcbindOptions {
  dir: string;
  address: string;
  log: Logger;
  /** Called after every start but the first (rpcbind forgot every registration: ganesha must register again). */
  onRestart?: () => void;
}

export class RpcbindServer extends SupervisedServer {
  protected readonly supervisor: Supervisor;
  /** False when an rpcbind we did not start serves: we neither supervise nor stop it. */
  owned = false;
  private starts = 0;

  constructor(private readonly o: RpcbindOptions) {
    super();
    this.supervisor = new Supervisor({
      name: 'rpcbind',
      command: 'rpcbind',
      args: rpcbindArgs(o.address),
      pidFile: join(o.dir, 'rpcbind.pid'),
      log: o.log,
      ready: async () => {
        await waitForPort('127.0.0.1', RPCBIND_PORT, 10_000);
        if (this.starts++ > 0) o.onRestart?.();
      },
    });
  }

  /** Whether NFSv3 can be offered: an rpcbind runs already, or we can start one. */
  static async available(): Promise<boolean> {
    return (await rpcbindRunning()) || (await onPath('rpcbind'));
  }

  /** Makes sure an rpcbind answers: the machine's own, or ours. */
  async start(): Promise<void> {
    if (this.owned && this.supervisor.health !== 'stopped') return;
    if (await rpcbindRunning()) {
      this.o.log.info('using the rpcbind that already runs on this machine');
      return;
    }
    this.owned = true;
    await fsp.mkdir(this.o.dir, { recursive: true, mode: 0o700 });
    await this.supervisor.start();
  }

  killServer(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.supervisor.signal(signal);
  }

  async stop(): Promise<void> {
    if (this.owned) await this.supervisor.stop();
    this.owned = false;
  }
}
