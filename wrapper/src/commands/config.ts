import type { Command } from 'commander';
import { BridgeError } from '../../../shared/src/errors.js';
import { formatSize, parseSize } from '../../../shared/src/size.js';
import { changeCredentials, setCacheSize } from '../instance.js';
import { action, context, DEFAULT_NAME, output } from './common.js';

export function register(program: Command): void {
  const config = program.command('config').description('change a running instance');
  config
    .command('set')
    .description('set a live setting: cache-size SIZE (the local cache of store: sources)')
    .argument('<key>', 'cache-size')
    .argument('<value>', 'e.g. 512M, 2G')
    .option('--name <name>', 'instance', DEFAULT_NAME)
    .option('--source <name>', 'only this store source')
    .option('--json', 'print JSON')
    .action(
      action(async (key: string, value: string, opts: { name: string; source?: string; json?: boolean }) => {
        if (key !== 'cache-size') throw new BridgeError('EINVAL', `config set: unknown key "${key}"; known: cache-size`);
        const bytes = parseSize(value, 'cache-size');
        await setCacheSize(opts.name, bytes, context({ quiet: true }), opts.source);
        output(opts.json ?? false, { name: opts.name, cacheSize: bytes }, () => `${opts.name}: cache size set to ${formatSize(bytes)}`);
      }),
    );

  program
    .command('credentials')
    .description('change the share password (and CHAP secret) of a running instance')
    .argument('<action>', 'set')
    .option('--name <name>', 'instance', DEFAULT_NAME)
    .option('--password-file <file>', 'new password (first line); else BRIDGE_PASSWORD, --ask-password, or generated')
    .option('--ask-password', 'prompt for the password (not echoed)')
    .option('--json', 'print JSON')
    .action(
      action(async (what: string, opts: { name: string; passwordFile?: string; askPassword?: boolean; json?: boolean }) => {
        if (what !== 'set') throw new BridgeError('EINVAL', `credentials: unknown action "${what}"; known: set`);
        const creds = await changeCredentials(
          opts.name,
          { ...(opts.passwordFile ? { passwordFile: opts.passwordFile } : {}), askPassword: opts.askPassword ?? false },
          context({ quiet: true }),
        );
        const shown = { name: opts.name, user: creds.user, ...(creds.generated ? { password: creds.password } : {}) };
        output(
          opts.json ?? false,
          shown,
          () => `${opts.name}: password of ${creds.user} changed${creds.generated ? ` to ${creds.password} (generated; shown only now)` : ''}`,
        );
      }),
    );
}
