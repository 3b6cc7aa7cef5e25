/** Small look-ups on instance state for `bridge logs` and `bridge ssh`. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BridgeError } from '../../shared/src/errors.js';
import { instanceDir, keyDir, lastConsoleLog, loadState, requireState } from './state.js';

export function consoleLogOf(name: string): string {
  const state = loadState(name);
  const live = state?.vm.consoleLog ?? join(instanceDir(name), 'console.log');
  const path = existsSync(live) ? live : lastConsoleLog(name);
  if (!existsSync(path)) throw new BridgeError('ENOENT', `no console log for instance "${name}" (${live})`);
  return path;
}

export function requireStateForSsh(name: string): { host: string; port: number; user: string; keyPath: string } {
  const state = requireState(name);
  const port = state.reachable?.ports.ssh;
  const keyPath = join(keyDir(name), 'id_ed25519');
  if (!port || !state.reachable) throw new BridgeError('ENOENT', `instance "${name}" has no SSH forward recorded`);
  if (!existsSync(keyPath)) throw new BridgeError('ENOENT', `the SSH key of "${name}" is missing (${keyPath})`);
  return { host: state.reachable.address, port, user: state.guest.sshUser, keyPath };
}
