import type { Command } from 'commander';
import { logger } from '../../../shared/src/logger.js';
import { applyGuestConfig, findConfigDrive, pathsUnder, readConfigDrive } from '../guest/config-drive.js';
import { requestPowerOff } from '../guest/power.js';
import { action, output } from './common.js';

interface InitOptions {
  device?: string;
  root: string;
  json?: boolean;
}

export function register(program: Command): void {
  const guest = program.command('guest').description('helpers that run inside the appliance (bridge-init calls them)');
  guest
    .command('init')
    .description('find the config drive, check it and write the authorized key, hostname and agent config')
    .option('--device <path>', 'the config drive (default: the disk with serial bridge-config, else a scan for the magic)')
    .option('--root <dir>', 'write under this directory instead of / (for tests)', '/')
    .option('--json', 'print what was applied as JSON')
    .addHelpText(
      'after',
      `
Writes /root/.ssh/authorized_keys (the one key sshd accepts), /run/bridge/agent.json,
/run/bridge/hostname, /run/bridge/ssh-port and /run/bridge/guest.json. No secret is on the drive.`,
    )
    .action(
      action(async (opts: InitOptions) => {
        const device = opts.device ?? findConfigDrive();
        const applied = applyGuestConfig(readConfigDrive(device), device, pathsUnder(opts.root));
        logger().child({ component: 'guest' }).info('config drive applied', { device, name: applied.name });
        output(opts.json ?? false, applied, () => `applied ${device}: ${applied.name}, sshd port ${applied.sshPort}`);
      }),
    );
  guest
    .command('poweroff')
    .description('stop the agent and sshd in order and power the appliance off')
    .action(
      action(async () => {
        requestPowerOff();
      }),
    );
}
