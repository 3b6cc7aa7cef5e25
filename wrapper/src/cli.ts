#!/usr/bin/env node
/**
 * bridge: the host CLI. Picks a hypervisor, boots the appliance, pushes secrets, reports and mounts the
 * exports. Each subcommand lives in commands/<name>.ts and registers itself here.
 */
import { Command, Option } from 'commander';
import { VERSION } from '../../shared/src/version.js';
import { applyGlobalOptions } from './commands/common.js';
import { register as registerConfig } from './commands/config.js';
import { register as registerDoctor } from './commands/doctor.js';
import { register as registerHypervisors } from './commands/hypervisors.js';
import { register as registerImage } from './commands/image.js';
import { register as registerLogs } from './commands/logs.js';
import { register as registerStart } from './commands/start.js';
import { register as registerStatus } from './commands/status.js';
import { register as registerStop } from './commands/stop.js';

const program = new Command('bridge')
  .description('use data your operating system cannot read: a small Linux appliance exports it over SMB, NFS and iSCSI')
  .version(VERSION)
  .addOption(new Option('--log-level <level>', 'debug, info, warn or error').choices(['debug', 'info', 'warn', 'error']).default('info'))
  .option('--log-json', 'log JSON lines (to stderr)', false)
  .hook('preAction', (cmd) => applyGlobalOptions(cmd));

for (const register of [registerStart, registerStatus, registerStop, registerConfig, registerLogs, registerHypervisors, registerImage, registerDoctor])
  register(program);

await program.parseAsync(process.argv);
