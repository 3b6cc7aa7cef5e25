#!/usr/bin/env node
/**
 * bridge-agent: the agent that runs inside the appliance (and, for development, on any Linux with
 * FUSE). Each subcommand lives in commands/<name>.ts and registers itself here.
 */
import { Command, Option } from 'commander';
import { VERSION } from '../../shared/src/version.js';
import { applyGlobalOptions } from './commands/common.js';
import { register as registerExpose } from './commands/expose.js';

const program = new Command('bridge-agent')
  .description('bridge agent: opens sources the host cannot read and exports them (FUSE file, SMB, NFS, iSCSI)')
  .version(VERSION)
  .addOption(new Option('--log-level <level>', 'debug, info, warn or error').choices(['debug', 'info', 'warn', 'error']).default('info'))
  .option('--log-json', 'log JSON lines (to stderr)', false)
  .hook('preAction', (cmd) => applyGlobalOptions(cmd));

for (const register of [registerExpose]) register(program);

await program.parseAsync(process.argv);
