/**
 * Clean power-off from inside the appliance: bridge-init (PID 1) traps SIGUSR2, stops the agent (which
 * stops its exports, unmounts and flushes), then sshd, syncs, unmounts and powers off.
 */
import { readFileSync } from 'node:fs';
import { BridgeError } from '../../../shared/src/errors.js';

export function isApplianceInit(cmdlineFile = '/proc/1/cmdline'): boolean {
  try {
    return readFileSync(cmdlineFile, 'utf8').includes('bridge-init');
  } catch {
    return false;
  }
}

export function requestPowerOff(): void {
  if (!isApplianceInit()) throw new BridgeError('ENOTSUP', 'not inside the bridge appliance (PID 1 is not bridge-init): refusing to power off this machine');
  process.kill(1, 'SIGUSR2');
}
