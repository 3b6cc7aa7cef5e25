/**
 * Loop devices through losetup. No udev here, so `losetup -P` makes no partition nodes: a partition
 * is attached on its own with --offset/--sizelimit.
 */
import { run, tryRun } from '../exports/run.js';

export interface LoopDevice {
  device: string;
  backingFile: string;
  offset: number;
}

export async function attachLoop(file: string, options: { offset: number; size: number; readOnly: boolean }): Promise<string> {
  const args = ['--find', '--show', '--offset', String(options.offset), '--sizelimit', String(options.size)];
  if (options.readOnly) args.push('--read-only');
  const { stdout } = await run('losetup', [...args, file]);
  return stdout.trim();
}

export async function detachLoop(device: string): Promise<void> {
  // The kernel may hold the device for a moment after umount: retry briefly.
  for (let i = 0; i < 10; i++) {
    if (await tryRun('losetup', ['-d', device])) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  await run('losetup', ['-d', device]);
}

export async function listLoops(): Promise<LoopDevice[]> {
  const { stdout } = await run('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE,OFFSET']);
  if (!stdout.trim()) return [];
  const parsed = JSON.parse(stdout) as { loopdevices?: { name: string; 'back-file': string | null; offset: number | string }[] };
  return (parsed.loopdevices ?? []).map((l) => ({
    device: l.name,
    // losetup appends " (deleted)" when the backing file is gone.
    backingFile: (l['back-file'] ?? '').replace(/ \(deleted\)$/, ''),
    offset: Number(l.offset),
  }));
}
