import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { BridgeError } from '../../../shared/src/errors.js';
import { consoleLogOf, requireStateForSsh } from '../instance-tools.js';
import { action, DEFAULT_NAME, intOption } from './common.js';

export function register(program: Command): void {
  program
    .command('logs')
    .description("print the appliance's console log (kernel, init, agent)")
    .argument('[name]', 'instance', DEFAULT_NAME)
    .option('-n, --lines <n>', 'only the last N lines', intOption('--lines', 1, 1_000_000))
    .option('-f, --follow', 'keep printing new lines')
    .action(
      action(async (name: string, opts: { lines?: number; follow?: boolean }) => {
        const path = consoleLogOf(name);
        if (opts.follow) {
          const args = ['-n', String(opts.lines ?? 50), '-F', path];
          await new Promise<void>((resolve) => spawn('tail', args, { stdio: 'inherit' }).on('close', () => resolve()));
          return;
        }
        const lines = readFileSync(path, 'utf8').replace(/\r/g, '').split('\n');
        process.stdout.write((opts.lines ? lines.slice(-opts.lines - 1) : lines).join('\n'));
      }),
    );

  program
    .command('ssh')
    .description('open a shell in the appliance (or run COMMAND) with the instance key')
    .argument('[name]', 'instance', DEFAULT_NAME)
    .argument('[command...]', 'command to run instead of a shell')
    .action(
      action(async (name: string, command: string[]) => {
        const t = requireStateForSsh(name);
        const args = [
          '-i',
          t.keyPath,
          '-p',
          String(t.port),
          '-o',
          'StrictHostKeyChecking=no',
          '-o',
          'UserKnownHostsFile=/dev/null',
          '-o',
          'LogLevel=ERROR',
          `${t.user}@${t.host}`,
          ...command,
        ];
        const code = await new Promise<number>((resolve, reject) =>
          spawn('ssh', args, { stdio: 'inherit' })
            .on('error', (e) => reject(new BridgeError('ENOENT', `cannot run ssh (OpenSSH client): ${e.message}`)))
            .on('close', (c) => resolve(c ?? 1)),
        );
        process.exitCode = code;
      }),
    );
}
