import type { Command } from 'commander';
import { join } from 'node:path';
import { detectAll } from '../hypervisors/detect.js';
import { hostRunner } from '../runner.js';
import { stateRoot } from '../state.js';
import { action, output } from './common.js';

export function register(program: Command): void {
  program
    .command('hypervisors')
    .description('report the hypervisors on this host, their versions and acceleration, and which one `bridge start` uses')
    .option('--accel <accel>', 'QEMU accelerator to assume: auto, kvm, hvf, whpx or tcg', 'auto')
    .option('--json', 'print the report as JSON')
    .action(
      action(async (opts: { accel: string; json?: boolean }) => {
        const report = await detectAll({ runner: hostRunner, probeCacheFile: join(stateRoot(), 'accel-probe.json'), accel: opts.accel });
        output(opts.json ?? false, report, () => {
          const lines = [`host: ${report.os} ${report.arch}`];
          for (const h of report.hypervisors) {
            const mark = h.name === report.choice ? '*' : ' ';
            const state = h.available ? `${h.version ?? '?'}${h.acceleration ? `, ${h.acceleration}` : ''}` : 'not available';
            lines.push(`${mark} ${h.name.padEnd(10)} ${h.title.padEnd(26)} ${state}${h.tested ? '' : '  [untested on a real host]'}`);
            for (const n of h.notes) lines.push(`    ${n}`);
          }
          lines.push(`bridge start uses: ${report.choice} (override with --hypervisor)`);
          return lines.join('\n');
        });
      }),
    );
}
