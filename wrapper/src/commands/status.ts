import type { Command } from 'commander';
import { formatSize } from '../../../shared/src/size.js';
import { instanceStatus, statusAll, type StatusEntry } from '../instance.js';
import { requireState } from '../state.js';
import { action, context, output } from './common.js';

function uptime(s?: number): string {
  if (s === undefined) return '-';
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${(s / 3600).toFixed(1)}h`;
}

export function describeStatus(list: StatusEntry[]): string {
  if (!list.length) return 'no instances (start one: bridge start)';
  const lines: string[] = [];
  for (const e of list) {
    lines.push(`${e.name}: ${e.state}, ${e.hypervisor}, up ${uptime(e.uptimeSeconds)}, image ${e.imageVersion}${e.pid ? `, pid ${e.pid}` : ''}`);
    if (e.error) lines.push(`  ${e.error}`);
    for (const c of e.cache)
      lines.push(`  cache ${c.source}: ${c.used !== undefined ? formatSize(c.used) : '?'}${c.size !== undefined ? ` of ${formatSize(c.size)}` : ''}`);
    for (const ep of e.endpoints) lines.push(`  ${ep.url}  ${ep.health}${ep.error ? ` (${ep.error})` : ''}`);
    for (const m of e.mounts) lines.push(`  mounted ${m.protocol}: ${m.target}`);
    if (e.state === 'dead') lines.push(`  the VM is gone: clean up with bridge stop ${e.name}`);
  }
  return lines.join('\n');
}

export function register(program: Command): void {
  program
    .command('status')
    .description('instances with hypervisor, state, uptime, image version, cache use and export URLs')
    .argument('[name]', 'only this instance')
    .option('--offline', 'do not ask the agents (faster; health from the last start)')
    .option('--json', 'print JSON')
    .action(
      action(async (name: string | undefined, opts: { offline?: boolean; json?: boolean }) => {
        const ctx = context({ quiet: true });
        const list = name ? [await instanceStatus(requireState(name), ctx, !opts.offline)] : await statusAll(ctx, !opts.offline);
        output(opts.json ?? false, list, () => describeStatus(list));
      }),
    );
}
