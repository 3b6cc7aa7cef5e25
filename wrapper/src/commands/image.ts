import type { Command } from 'commander';
import { resolve } from 'node:path';
import { BridgeError } from '../../../shared/src/errors.js';
import { qemuImgConvert, type DiskFormat } from '../hypervisors/backend.js';
import { convertedDisk, ensureImage } from '../image.js';
import { StderrProgress } from '../progress.js';
import { hostRunner } from '../runner.js';
import { clearTemplates, listTemplates, templatesRoot } from '../templates.js';
import { action, output } from './common.js';

const FORMATS = ['raw', 'qcow2', 'vmdk', 'vdi', 'vhdx'] as const;

export function register(program: Command): void {
  const image = program.command('image').description('the appliance image: build it, convert it');
  image
    .command('build')
    .description('build the appliance image, or reuse it when its inputs did not change (needs root)')
    .option('--json', 'print the manifest as JSON')
    .action(
      action(async (opts: { json?: boolean }) => {
        const progress = new StderrProgress();
        const img = await ensureImage((p) => progress.phase(`[${p.step}/${p.steps}] ${p.message}`));
        output(opts.json ?? false, img, () => `image ${img.version}: ${img.manifestPath}`);
      }),
    );
  image
    .command('templates')
    .description('saved VM states that warm starts restore from (QEMU): list them, or remove them all')
    .option('--clear', 'remove every template (the next start makes a new one)')
    .option('--json', 'print the result as JSON')
    .action(
      action(async (opts: { clear?: boolean; json?: boolean }) => {
        if (opts.clear) {
          const r = clearTemplates();
          output(opts.json ?? false, r, () => `removed ${r.removed} template(s), ${(r.bytes / 1e6).toFixed(0)} MB`);
          return;
        }
        const all = listTemplates();
        output(opts.json ?? false, all, () =>
          all.length
            ? all
                .map((t) =>
                  t.meta
                    ? `${t.key}  ${(t.bytes / 1e6).toFixed(0)} MB  image ${t.meta.imageVersion}  qemu ${t.meta.qemuVersion}/${t.meta.accel}  ${t.meta.memoryMiB} MiB ${t.meta.cpus} CPU  made ${t.meta.created}`
                    : `${t.key}  ${(t.bytes / 1e6).toFixed(0)} MB  UNUSABLE: ${t.problem}`,
                )
                .join('\n')
            : `no templates in ${templatesRoot()} (the next bridge start makes one)`,
        );
      }),
    );
  image
    .command('convert')
    .description("convert the appliance's disk for another hypervisor (cached per image hash)")
    .requiredOption('--to <format>', `one of ${FORMATS.join(', ')}`)
    .option('--out <path>', 'write here instead of the cache beside the image')
    .option('--json', 'print the result as JSON')
    .action(
      action(async (opts: { to: string; out?: string; json?: boolean }) => {
        if (!(FORMATS as readonly string[]).includes(opts.to)) throw new BridgeError('EINVAL', `--to: expected one of ${FORMATS.join(', ')}; got "${opts.to}"`);
        const format = opts.to as DiskFormat;
        const progress = new StderrProgress();
        const img = await ensureImage((p) => progress.phase(`[${p.step}/${p.steps}] ${p.message}`));
        const onProgress = (p: number): void => progress.percent(`converting to ${format}`, p);
        let path: string;
        if (opts.out) {
          path = resolve(opts.out);
          await qemuImgConvert(hostRunner, img.disk, path, format, onProgress);
        } else path = await convertedDisk(img, format, (s, d, p) => qemuImgConvert(hostRunner, s, d, format, p), onProgress);
        progress.end();
        output(opts.json ?? false, { format, path, imageVersion: img.version }, () => path);
      }),
    );
}
