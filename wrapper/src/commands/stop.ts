import type { Command } from 'commander';
import { BridgeError } from '../../../shared/src/errors.js';
import { stopInstance } from '../instance.js';
import { listStates } from '../state.js';
import { action, context, DEFAULT_NAME, intOption, output } from './common.js';

export function register(program: Command): void {
  program
    .command('stop')
    .description('unmount on the host, stop the exports (flushing), power the VM off (forced after a timeout), remove the instance')
    .argument('[name]', 'instance name', DEFAULT_NAME)
    .option('--all', 'stop every instance')
    .option('--timeout <seconds>', 'graceful power-off time before forcing', intOption('--timeout', 1, 600), 20)
    .option('--json', 'print JSON')
    .action(
      action(async (name: string, opts: { all?: boolean; timeout: number; json?: boolean }) => {
        const ctx = context({ quiet: true });
        const names = opts.all ? listStates().map((s) => s.name) : [name];
        if (!opts.all && !listStates().some((s) => s.name === name)) throw new BridgeError('ENOENT', `no instance named "${name}" (see: bridge status)`);
        const results: Awaited<ReturnType<typeof stopInstance>>[] = [];
        for (const n of names) results.push(await stopInstance(n, ctx, opts.timeout * 1000));
        output(opts.json ?? false, results, () =>
          results.length
            ? results
                .map((r) => [`stopped ${r.name} in ${r.seconds.toFixed(1)} s${r.forced ? ' (forced)' : ''}`, ...r.problems.map((p) => `  ${p}`)].join('\n'))
                .join('\n')
            : 'no instances',
        );
      }),
    );
}
