/**
 * `bridge-agent fat32 serve|report`: a FAT32-on-MBR disk synthesized from a directory tree.
 * serve exposes it as MOUNTPOINT/disk.img (FUSE) until SIGINT/SIGTERM; report prints what the
 * volume would hold and what it leaves out, without serving.
 */
import { Option, type Command } from 'commander';
import { constants as fsc, promises as fsp } from 'node:fs';
import { resolve } from 'node:path';
import { BridgeError } from '../../../shared/src/errors.js';
import { formatSize } from '../../../shared/src/size.js';
import { buildFat32Volume, type Fat32Options, type Fat32Report, type Fat32Volume } from '../fat32/index.js';
import { onShutdown, untilShutdown } from '../process/shutdown.js';
import { action, output, sizeOption } from './common.js';
import { publishDevice } from './publish.js';

interface Fat32CommandOptions {
  source: string;
  size?: number;
  label?: string;
  clusterSize?: number;
  json?: boolean;
  reportFile?: string;
  sourceIo?: 'sync' | 'async';
  readOnly?: boolean;
  journal?: string;
  nbd?: string;
  nbdName?: string;
}

function summary(r: Fat32Report): string {
  const lines = [
    `${r.files} files, ${r.directories} directories, ${formatSize(r.bytes)} from ${r.source}`,
    `disk ${formatSize(r.diskSize)}, FAT32 partition at ${formatSize(r.partitionOffset)}, ${r.clusters} clusters of ${r.clusterSize} bytes, ${r.freeClusters} free`,
  ];
  if (r.leftOut.length) lines.push(`left out (${r.leftOut.length}):`, ...r.leftOut.map((l) => `  ${l.path}: ${l.reason}`));
  if (r.renamed.length) lines.push(`renamed (${r.renamed.length}):`, ...r.renamed.map((l) => `  ${l.path} -> ${l.name}`));
  if (r.changed.length) lines.push(`changed since the snapshot, reads fail (${r.changed.length}):`, ...r.changed.map((l) => `  ${l.path}: ${l.detail}`));
  const wb = r.writeBack;
  if (wb) {
    lines.push(`write-back to the source at each flush (journal ${wb.journal})`);
    if (wb.suspended) lines.push(`  suspended: ${wb.suspended}`);
    if (wb.held) lines.push(`  held (volume not consistent):`, ...wb.held.map((h) => `    ${h}`));
    if (wb.conflicts.length) lines.push(`  conflicts (${wb.conflicts.length}):`, ...wb.conflicts.map((c) => `    ${c.path}: ${c.detail}`));
  } else lines.push('read-only');
  return lines.join('\n');
}

/** Writes the report atomically (tmp + rename) so readers never see half a file. */
async function writeReport(path: string, vol: Fat32Volume): Promise<void> {
  const tmp = `${path}.tmp`;
  await fsp.writeFile(tmp, JSON.stringify(vol.report(), null, 2) + '\n');
  await fsp.rename(tmp, path);
}

const volumeOptions = (o: Fat32CommandOptions): Fat32Options => ({
  // The CLI serves a directory some other process provides, so synchronous source reads are safe here.
  ioMode: o.sourceIo ?? 'sync',
  ...(o.size !== undefined ? { size: o.size } : {}),
  ...(o.label !== undefined ? { label: o.label } : {}),
  ...(o.clusterSize !== undefined ? { clusterSize: o.clusterSize } : {}),
});

export function register(program: Command): void {
  const fat32 = program
    .command('fat32')
    .description('a FAT32-on-MBR disk synthesized from a directory tree (file data read on demand; host writes applied to the tree)');

  fat32
    .command('serve')
    .description('serve the synthesized disk as MOUNTPOINT/disk.img through FUSE and/or over NBD until SIGINT/SIGTERM')
    .requiredOption('--source <dir>', 'directory tree to present')
    .option('--size <size>', 'disk size (default: the tree plus max(10%, 256 MiB) of free space)', sizeOption('--size'))
    .option('--label <name>', 'volume label, up to 11 characters (default BRIDGE)')
    .option('--cluster-size <bytes>', 'force a cluster size, 512 to 32K (default: from the size)', sizeOption('--cluster-size'))
    .addOption(
      new Option('--source-io <mode>', 'read source files with sync system calls (fastest from the page cache) or async ones (slow or remote sources)')
        .choices(['sync', 'async'])
        .default('sync'),
    )
    .option('--read-only', 'refuse every write to the disk (EROFS); default: write host changes back when the source is writable')
    .option('--journal <dir>', 'write-back journal directory, on the source file system (default SOURCE/.bridge-fat32)')
    .option('--report-file <path>', 'write the JSON report here when ready, and again whenever a source file is found changed or the write-back state changes')
    .option('--nbd <address>', 'also (or, without MOUNTPOINT, only) serve over NBD: a Unix socket path, HOST:PORT or :PORT (loopback only)')
    .option('--nbd-name <name>', 'NBD export name (default: the empty default name)')
    .option('--json', 'print what is served and the report as JSON once ready')
    .argument('[mountpoint]', 'directory to mount disk.img on (created when missing; a stale mount is cleared); optional with --nbd')
    .addHelpText(
      'after',
      `
Examples:
  bridge-agent fat32 serve --source /srv/photos /mnt/fat        # serves /mnt/fat/disk.img
  mdir -i /mnt/fat/disk.img@@1M ::/                              # read it with mtools
  bridge-agent fat32 serve --source /srv/photos --read-only --nbd /run/fat.sock   # NBD only
  nbdcopy 'nbd+unix:///?socket=/run/fat.sock' copy.img                            # a real NBD client
  bridge-agent fat32 serve --source /srv/data --size 64G --label DATA --report-file /run/fat.json /mnt/fat

The metadata is a snapshot taken at start; a file changed in the source afterwards reads as an I/O
error (listed under "changed" in the report) rather than as torn data.

Writes: unless --read-only (or the source is not writable), what a host writes to the disk is applied
to the source tree at each flush (fsync or close of disk.img, SCSI SYNCHRONIZE CACHE): new, changed,
renamed and deleted files and directories, modification times and the read-only attribute. A format
or boot-sector rewrite suspends the write-back; see docs/fat32.md, "Write path".`,
    )
    .action(
      action(async (mountpoint: string | undefined, opts: Fat32CommandOptions) => {
        if (!mountpoint && !opts.nbd) throw new BridgeError('EINVAL', 'give a MOUNTPOINT for the FUSE file, --nbd ADDRESS, or both');
        const source = resolve(opts.source);
        const writable =
          !opts.readOnly &&
          (await fsp.access(source, fsc.W_OK).then(
            () => true,
            () => false,
          ));
        const vol = await buildFat32Volume(source, {
          ...volumeOptions(opts),
          writeBack: writable,
          ...(opts.journal ? { journalDir: resolve(opts.journal) } : {}),
        });
        const served = await publishDevice(vol, {
          readOnly: !writable,
          fsname: 'bridge-fat32',
          flushOnClose: true,
          ...(mountpoint ? { mountpoint } : {}),
          ...(opts.nbd ? { nbd: opts.nbd } : {}),
          ...(opts.nbdName !== undefined ? { nbdName: opts.nbdName } : {}),
        });
        const reportFile = opts.reportFile;
        if (reportFile) {
          await writeReport(reportFile, vol);
          // Keep the file current when reads find changed source files (checked at most once a second).
          let written = '';
          const timer = setInterval(() => {
            const r = vol.report();
            const key = JSON.stringify([r.changed.length, r.writeBack?.held, r.writeBack?.suspended, r.writeBack?.conflicts.length, r.writeBack?.flushes]);
            if (key !== written) {
              written = key;
              void writeReport(reportFile, vol);
            }
          }, 1000);
          timer.unref();
          onShutdown('stop report updates', async () => clearInterval(timer));
        }
        const report = vol.report();
        output(
          opts.json ?? false,
          { ...served, size: vol.size, writable, report },
          () =>
            `${[served.file && `serving ${served.file}`, served.nbd && `serving NBD ${served.nbd}`].filter(Boolean).join('\n')}\n${summary(report)}\nstop with Ctrl-C or SIGTERM`,
        );
        await untilShutdown();
      }),
    );

  fat32
    .command('report')
    .description('scan a tree and print what the synthesized volume would hold and leave out, without serving')
    .requiredOption('--source <dir>', 'directory tree to scan')
    .option('--size <size>', 'disk size to check the tree against', sizeOption('--size'))
    .option('--label <name>', 'volume label')
    .option('--cluster-size <bytes>', 'force a cluster size', sizeOption('--cluster-size'))
    .option('--json', 'print the report as JSON')
    .action(
      action(async (opts: Fat32CommandOptions) => {
        const vol = await buildFat32Volume(resolve(opts.source), volumeOptions(opts));
        try {
          const report = vol.report();
          output(opts.json ?? false, report, () => summary(report));
        } finally {
          await vol.close();
        }
      }),
    );
}
