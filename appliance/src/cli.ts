#!/usr/bin/env node
/**
 * bridge-agent: the agent that runs inside the appliance (and, for development, on any Linux with
 * FUSE). Each subcommand lives in commands/<name>.ts and registers itself here.
 *
 * Modules load lazily: only the module that owns the command being run is imported (start-up time
 * matters — the appliance's boot and every SSH call from the host run this), all of them for --help.
 */
import { Command, Option } from 'commander';
import { VERSION } from '../../shared/src/version.js';
import { applyGlobalOptions } from './commands/common.js';

// libuv's pool size (UV_THREADPOOL_SIZE) is set by the launchers, appliance/bin/bridge-agent.cjs and the
// guest's /usr/local/bin/bridge-agent: by the time this ES module runs, the pool has its size.

type Register = (program: Command) => void;
const modules: Record<string, () => Promise<{ register: Register }>> = {
  expose: () => import('./commands/expose.js'),
  fat32: () => import('./commands/fat32.js'),
  guest: () => import('./commands/guest.js'),
  serve: () => import('./commands/serve.js'),
  store: () => import('./commands/store.js'),
};
/** Top-level commands registered by a module other than the one of the same name. */
const owner: Record<string, string> = { status: 'serve', secret: 'serve', config: 'serve', reload: 'serve', stop: 'serve' };

const program = new Command('bridge-agent')
  .description('bridge agent: opens sources the host cannot read and exports them (FUSE file, SMB, NFS, iSCSI)')
  .version(VERSION)
  .addOption(new Option('--log-level <level>', 'debug, info, warn or error').choices(['debug', 'info', 'warn', 'error']).default('info'))
  .option('--log-json', 'log JSON lines (to stderr)', false)
  .hook('preAction', (cmd) => applyGlobalOptions(cmd));

// The first word that is not an option (or an option's value) names the command.
const args = process.argv.slice(2);
let word: string | undefined;
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (a === '--log-level') i++;
  else if (!a.startsWith('-')) {
    word = a;
    break;
  }
}
const name = word && (owner[word] ?? word);
const versionOnly = !word && (args.includes('--version') || args.includes('-V'));
const wanted = versionOnly ? [] : name && name in modules ? [modules[name]!] : Object.values(modules);
for (const load of wanted) (await load()).register(program);

await program.parseAsync(process.argv);
