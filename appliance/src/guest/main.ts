/**
 * Lean entry point for the in-guest helpers (`bridge-agent guest init|poweroff`), which run on the
 * boot path under emulation where every imported module costs time: the image's bridge-agent wrapper
 * routes `guest ...` here instead of loading the whole CLI (commander + every command's dependencies).
 * Same behaviour and exit codes as commands/guest.ts, which keeps these reachable from the full CLI.
 */
import { errorMessage, BridgeError } from '../../../shared/src/errors.js';
import { APPLIANCE_PATHS, applyGuestConfig, findConfigDrive, readConfigDrive } from './config-drive.js';
import { requestPowerOff } from './power.js';

function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : args.find((a) => a.startsWith(name + '='))?.slice(name.length + 1);
}

function main(args: string[]): void {
  const [command, ...rest] = args;
  if (command === 'init') {
    const device = option(rest, '--device') ?? findConfigDrive();
    const applied = applyGuestConfig(readConfigDrive(device), device, { ...APPLIANCE_PATHS, root: option(rest, '--root') ?? '/' });
    process.stdout.write(rest.includes('--json') ? JSON.stringify(applied) + '\n' : `applied ${device}: ${applied.name}, sshd port ${applied.sshPort}\n`);
  } else if (command === 'poweroff') {
    requestPowerOff();
  } else {
    throw new BridgeError('EINVAL', `unknown guest command "${command ?? ''}" (init, poweroff)`);
  }
}

try {
  main(process.argv.slice(2).filter((a, i) => !(i === 0 && a === 'guest')));
} catch (e) {
  process.stderr.write(`error: ${errorMessage(e)}\n`);
  process.exitCode = e instanceof BridgeError && e.code === 'CONFIG' ? 2 : 1;
}
