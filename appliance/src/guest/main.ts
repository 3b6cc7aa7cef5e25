/**
 * Lean entry point for the in-guest helpers (`bridge-agent guest init|poweroff`): the image's
 * bridge-agent wrapper routes `guest ...` here instead of loading the whole CLI (commander + every
 * command's dependencies), which costs seconds under emulation. Same behaviour and exit codes as
 * commands/guest.ts. The boot itself no longer runs `guest init`: `serve --config-drive` reads the
 * drive in the one Node process of the boot path; `init` stays for hand use and other inits.
 */
import { errorMessage, BridgeError } from '../../../shared/src/errors.js';
import { requestPowerOff } from './power.js';

function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : args.find((a) => a.startsWith(name + '='))?.slice(name.length + 1);
}

async function main(args: string[]): Promise<void> {
  const [command, ...rest] = args;
  if (command === 'init') {
    // Loaded only here: the drive's schema (zod) is not needed to power off.
    const { applyGuestConfig, findConfigDrive, pathsUnder, readConfigDrive } = await import('./config-drive.js');
    const device = option(rest, '--device') ?? findConfigDrive();
    const applied = applyGuestConfig(readConfigDrive(device), device, pathsUnder(option(rest, '--root') ?? '/'));
    process.stdout.write(rest.includes('--json') ? JSON.stringify(applied) + '\n' : `applied ${device}: ${applied.name}, sshd port ${applied.sshPort}\n`);
  } else if (command === 'poweroff') {
    requestPowerOff();
  } else {
    throw new BridgeError('EINVAL', `unknown guest command "${command ?? ''}" (init, poweroff)`);
  }
}

main(process.argv.slice(2).filter((a, i) => !(i === 0 && a === 'guest'))).catch((e: unknown) => {
  process.stderr.write(`error: ${errorMessage(e)}\n`);
  process.exitCode = e instanceof BridgeError && e.code === 'CONFIG' ? 2 : 1;
});
