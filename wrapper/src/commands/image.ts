import type { Command } from 'commander';
import { resolve } from 'node:path';
import { BridgeError } from '../../../shared/src/errors.js';
import { qemuImgConvert, type DiskFormat } from '../hypervisors/backend.js';
import { convertedDisk, ensureImage } from '../image.js';
import { StderrProgress } from '../progress.js';
import { hostRunner } from '../runner.js';
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
