/**
 * The embedded default source: a small ext4 disk made on the fly (mkfs.ext4 -d from a generated folder
 * with a README), so `bridge start` with no --source needs nothing from the user.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { VERSION } from '../../shared/src/version.js';
import type { CommandRunner } from './runner.js';
import { BridgeError } from '../../shared/src/errors.js';

export const DEMO_README = `This disk is an ext4 filesystem that bridge made on the fly.

Your operating system cannot read ext4 itself; the bridge appliance (a small Linux VM) opened it and
exports it to you over SMB. Files you write here land inside the disk image.

Use your own data instead:  bridge start --source disk:/path/to/disk.img
Stop this instance:         bridge stop
`;

export async function makeDemoDisk(runner: CommandRunner, dir: string): Promise<string> {
  if (!runner.which('mkfs.ext4')) {
    throw new BridgeError('ENOENT', 'the demo disk needs mkfs.ext4 on the host (Debian: e2fsprogs); or give your own: --source disk:PATH');
  }
  const tree = join(dir, 'demo-tree');
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(join(tree, 'examples'), { recursive: true });
  writeFileSync(join(tree, 'README.txt'), DEMO_README);
  writeFileSync(join(tree, 'examples', 'hello.txt'), `Hello from bridge ${VERSION}, served from an ext4 disk.\n`);
  const img = join(dir, 'demo.img');
  rmSync(img, { force: true });
  await runner.run('mkfs.ext4', ['-q', '-F', '-L', 'bridge-demo', '-d', tree, img, '64M']);
  rmSync(tree, { recursive: true, force: true });
  return img;
}
