import { Option, type Command } from 'commander';
import { parseExports } from '../guest-config.js';
import { HYPERVISOR_CHOICES, type HypervisorChoice } from '../hypervisors/detect.js';
import { startInstance, type StartResult } from '../instance.js';
import { action, context, DEFAULT_NAME, intOption, output, sizeOption } from './common.js';

interface StartCliOptions {
  name: string;
  source: string[];
  export: string;
  fat32?: boolean;
  hypervisor: HypervisorChoice;
  accel?: string;
  cacheSize?: number;
  endpoint?: string;
  passphraseFile?: string;
  user?: string;
  passwordFile?: string;
  askPassword?: boolean;
  mount: boolean;
  memory: number;
  cpus: number;
  bootTimeout: number;
  snapshot: boolean;
  json?: boolean;
}

const BOOT_WORDS: Record<StartResult['boot'], string> = {
  cold: 'booted',
  'template-created': 'booted; saved as the template for the next starts',
  restored: 'restored from the saved template',
};

export function describeStart(r: StartResult): string {
  const lines = [
    `instance "${r.name}" is up in ${r.seconds.total.toFixed(1)} s (${r.hypervisor}${r.acceleration ? `/${r.acceleration}` : ''}, image ${r.imageVersion}, ${BOOT_WORDS[r.boot]})`,
  ];
  lines.push(`user: ${r.user}${r.password ? `   password: ${r.password}   (generated; shown only now)` : ''}`);
  if (r.chapSecret) lines.push(`iSCSI CHAP secret: ${r.chapSecret}   (generated; shown only now)`);
  for (const ep of r.endpoints) lines.push(`  ${ep.url}${ep.health === 'ok' ? '' : `   [${ep.health}${ep.error ? `: ${ep.error}` : ''}]`}`);
  for (const m of r.mounts) lines.push(`mounted ${m.protocol} on ${m.target}`);
  const reasons = new Set(r.notMounted.map((n) => n.reason));
  for (const reason of reasons) {
    if (reason !== '--no-mount') lines.push(`not mounted: ${reason}`);
  }
  if (r.notMounted.length) {
    lines.push('reach the exports with:');
    for (const n of r.notMounted) for (const c of n.commands) lines.push(`  ${c}`);
  }
  lines.push(`stop it with: bridge stop${r.name === DEFAULT_NAME ? '' : ` ${r.name}`}`);
  return lines.join('\n');
}

export function register(program: Command): void {
  program
    .command('start')
    .description('boot the appliance and export sources over SMB, NFS or iSCSI (with no --source: a demo ext4 disk over SMB)')
    .option('--name <name>', 'instance name', DEFAULT_NAME)
    .option(
      '--source <spec>',
      'disk:PATH[:ro], store:s3://BUCKET/PREFIX, store:dir:PATH or dir:PATH[:ro]; NAME=SPEC names it (repeatable)',
      (v: string, prev: string[]) => [...prev, v],
      [] as string[],
    )
    .option('--export <protocols>', 'smb, nfs, iscsi or a comma-separated list', 'smb')
    .option('--fat32', 'export each source as a synthesized FAT32 volume over iSCSI')
    .addOption(new Option('--hypervisor <name>', 'which hypervisor (see: bridge hypervisors)').choices(HYPERVISOR_CHOICES).default('auto'))
    .addOption(new Option('--accel <accel>', 'QEMU accelerator').choices(['auto', 'kvm', 'hvf', 'whpx', 'tcg']))
    .option('--cache-size <size>', 'local cache of store: sources (e.g. 512M)', sizeOption('--cache-size'))
    .option('--endpoint <url>', 'S3 endpoint for store:s3 sources (127.0.0.1 is rewritten for the guest)')
    .option('--passphrase-file <file>', 'encryption passphrase of store: sources (first line)')
    .option('--user <name>', 'share user and CHAP user', 'bridge')
    .option('--password-file <file>', 'share password (first line); else BRIDGE_PASSWORD, --ask-password, or generated')
    .option('--ask-password', 'prompt for the password (not echoed)')
    .option('--no-mount', 'do not mount the exports on this host')
    .option('--memory <MiB>', 'guest memory', intOption('--memory', 256, 65536), 1024)
    .option('--cpus <n>', 'guest CPUs', intOption('--cpus', 1, 64), 2)
    .option('--boot-timeout <seconds>', 'how long to wait for the agent', intOption('--boot-timeout', 5, 3600), 120)
    .option('--no-snapshot', 'always boot: do not start from (or save) a saved VM state (also BRIDGE_SNAPSHOT=0)')
    .option('--json', 'print the result as JSON (progress stays on stderr)')
    .addHelpText(
      'after',
      `
Examples:
  bridge start                                        # demo disk over SMB; prints how to reach it
  bridge start --source disk:/srv/linux.img:ro --export smb,nfs
  bridge start --source disk:data.img --export iscsi --fat32 --no-mount
  AWS_ACCESS_KEY_ID=.. AWS_SECRET_ACCESS_KEY=.. bridge start --source store:s3://bucket/vol \\
      --endpoint http://127.0.0.1:9000 --export iscsi --cache-size 1G

Passwords never go on the command line: --password-file, BRIDGE_PASSWORD, --ask-password, or a
generated one printed once. Instance state: $XDG_STATE_HOME/bridge/instances/NAME (no secrets).`,
    )
    .action(
      action(async (opts: StartCliOptions) => {
        const ctx = context({ ...(opts.accel ? { accel: opts.accel } : {}) });
        const result = await startInstance(
          {
            name: opts.name,
            sources: opts.source,
            exports: parseExports(opts.export),
            fat32: opts.fat32 ?? false,
            hypervisor: opts.hypervisor,
            ...(opts.cacheSize !== undefined ? { cacheSize: opts.cacheSize } : {}),
            ...(opts.endpoint ? { endpoint: opts.endpoint } : {}),
            ...(opts.passphraseFile ? { passphraseFile: opts.passphraseFile } : {}),
            credentials: {
              ...(opts.user ? { user: opts.user } : {}),
              ...(opts.passwordFile ? { passwordFile: opts.passwordFile } : {}),
              askPassword: opts.askPassword ?? false,
            },
            mount: opts.mount,
            memoryMiB: opts.memory,
            cpus: opts.cpus,
            bootTimeoutMs: opts.bootTimeout * 1000,
            snapshot: opts.snapshot,
          },
          ctx,
        );
        ctx.progress.end();
        output(opts.json ?? false, result, () => describeStart(result));
      }),
    );
}
