/**
 * `bridge doctor`: checks every prerequisite, then boots the appliance once with the demo disk, lists
 * the SMB share with smbclient when it is installed, stops it, and prints "TEST FINISHED OK" — the
 * model is libguestfs-test-tool.
 */
import { Option, type Command } from 'commander';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import { HYPERVISOR_CHOICES, type HypervisorChoice } from '../hypervisors/detect.js';
import { startInstance, stopInstance, type Context } from '../instance.js';
import { mountSupport } from '../mount.js';
import { hostRunner } from '../runner.js';
import { listTemplates, templatesRoot } from '../templates.js';
import { action, context } from './common.js';

function say(line: string): void {
  process.stdout.write(line + '\n');
}

async function check(what: string, fn: () => Promise<string> | string, required = true): Promise<boolean> {
  try {
    say(`  ok    ${what}: ${await fn()}`);
    return true;
  } catch (e) {
    say(`  ${required ? 'FAIL' : 'warn'}  ${what}: ${errorMessage(e)}`);
    return !required;
  }
}

const need = (cmd: string, pkg: string) => (): string => {
  const p = hostRunner.which(cmd);
  if (!p) throw new BridgeError('ENOENT', `${cmd} not found (Debian: ${pkg})`);
  return p;
};

export function register(program: Command): void {
  program
    .command('doctor')
    .description('check prerequisites and boot the appliance once (prints TEST FINISHED OK)')
    .addOption(new Option('--hypervisor <name>', 'which hypervisor').choices(HYPERVISOR_CHOICES).default('auto'))
    .addOption(new Option('--accel <accel>', 'QEMU accelerator').choices(['auto', 'kvm', 'hvf', 'whpx', 'tcg']))
    .option('--no-boot', 'only check prerequisites')
    .action(
      action(async (opts: { hypervisor: HypervisorChoice; accel?: string; boot: boolean }) => {
        const ctx: Context = context({ ...(opts.accel ? { accel: opts.accel } : {}) });
        say(`bridge doctor: ${process.platform} ${process.arch}, node ${process.version}`);
        let ok = true;
        ok =
          (await check('node >= 20', () => {
            if (Number(process.versions.node.split('.')[0]) < 20) throw new Error(`node ${process.version} is too old`);
            return process.version;
          })) && ok;
        ok = (await check('qemu-img', need('qemu-img', 'qemu-utils'))) && ok;
        ok = (await check('mkfs.ext4 (demo disk)', need('mkfs.ext4', 'e2fsprogs'), false)) && ok;
        await check('smbclient (to verify the boot)', need('smbclient', 'smbclient'), false);
        for (const p of ['smb', 'nfs', 'iscsi'] as const) {
          await check(
            `host can mount ${p}`,
            async () => {
              const s = await mountSupport(hostRunner, p);
              if (!s.ok) throw new Error(`${s.reason} (bridge prints how to reach it instead)`);
              return 'yes';
            },
            false,
          );
        }
        await check(
          'saved VM states (warm starts)',
          () => {
            const all = listTemplates();
            const mb = Math.round(all.reduce((n, t) => n + t.bytes, 0) / 1e6);
            const broken = all.filter((t) => t.problem).length;
            return `${all.length} in ${templatesRoot()} (${mb} MB${broken ? `, ${broken} unusable` : ''}); bridge image templates [--clear]`;
          },
          false,
        );
        if (!ok) throw new BridgeError('ENOENT', 'prerequisites are missing (see FAIL above)');
        if (!opts.boot) {
          say('TEST FINISHED OK (no boot)');
          return;
        }
        const name = `doctor-${process.pid}`;
        const password = Buffer.from(Array.from({ length: 12 }, () => 97 + Math.floor(Math.random() * 26))).toString();
        process.env.BRIDGE_PASSWORD = password;
        try {
          const r = await startInstance(
            {
              name,
              sources: [],
              exports: ['smb'],
              fat32: false,
              hypervisor: opts.hypervisor,
              credentials: {},
              mount: false,
              memoryMiB: 1024,
              cpus: 2,
              bootTimeoutMs: 180_000,
            },
            ctx,
          );
          ctx.progress.end();
          say(
            `  ok    boot: ${r.hypervisor}${r.acceleration ? `/${r.acceleration}` : ''}, image ${r.imageVersion}, ${r.boot}, agent up after ${r.seconds.boot.toFixed(1)} s`,
          );
          const smb = r.endpoints.find((e) => e.protocol === 'smb');
          if (!smb || smb.health !== 'ok') throw new BridgeError('EIO', `the SMB export is not serving: ${smb?.error ?? 'missing'}`);
          if (hostRunner.which('smbclient')) {
            const ls = await hostRunner.run('smbclient', [`//${smb.address}/${smb.path}`, '-p', String(smb.port), '-U', r.user, '-c', 'ls'], {
              env: { ...process.env, PASSWD: password },
              timeoutMs: 30_000,
            });
            if (!ls.stdout.includes('README.txt')) throw new BridgeError('EIO', `smbclient listed the share but README.txt is missing:\n${ls.stdout}`);
            say(`  ok    smbclient lists ${smb.url}: README.txt present`);
          }
        } finally {
          delete process.env.BRIDGE_PASSWORD;
          const s = await stopInstance(name, ctx).catch((e: unknown) => ({ seconds: -1, forced: true, problems: [errorMessage(e)] }));
          say(
            `  ${s.problems.length ? 'warn' : 'ok  '}  stop: ${s.seconds.toFixed(1)} s${s.forced ? ' (forced)' : ''}${s.problems.length ? ` ${s.problems.join('; ')}` : ''}`,
          );
        }
        say('TEST FINISHED OK');
      }),
    );
}
