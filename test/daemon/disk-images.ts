/** Test disk images made with sfdisk and mkfs.ext4 (-d fills the filesystem without mounting it). */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sh } from './agent-process.js';

async function must(cmd: string, args: string[], input?: string): Promise<void> {
  const r = await sh(cmd, args, input);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
}

/** An ext4 filesystem holding `files`, written at byte `offset` of `image` (created when missing). */
export async function ext4At(image: string, offset: number, sizeKiB: number, files: Record<string, string>): Promise<void> {
  const content = `${image}.content-${offset}`;
  mkdirSync(content, { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(join(content, name), text);
  await must('mkfs.ext4', ['-q', '-F', '-d', content, '-E', `offset=${offset}`, image, `${sizeKiB}k`]);
}

/** 64 MiB GPT disk: partition 1 (8 MiB) empty, partition 2 ext4 with gpt.txt. */
export async function gptDisk(path: string): Promise<void> {
  await must('truncate', ['-s', '64M', path]);
  await must('sfdisk', ['-q', path], 'label: gpt\nstart=2048, size=16384\nstart=18432, size=110592, type=linux\n');
  await ext4At(path, 18432 * 512, 110592 / 2, { 'gpt.txt': 'in gpt partition 2\n' });
}

/** 48 MiB MBR disk: primary 1 empty, extended 2, logical 5 ext4 with mbr.txt. */
export async function mbrDisk(path: string): Promise<void> {
  await must('truncate', ['-s', '48M', path]);
  await must('sfdisk', ['-q', path], 'label: dos\nstart=2048, size=8192, type=83\nstart=10240, type=5\nstart=12288, size=40000, type=83\n');
  await ext4At(path, 12288 * 512, 40000 / 2, { 'mbr.txt': 'in mbr logical 5\n' });
}

/** An ext4 filesystem over a whole image, no partition table. */
export async function wholeExt4(path: string, sizeMiB: number, files: Record<string, string>): Promise<void> {
  await must('truncate', ['-s', `${sizeMiB}M`, path]);
  await ext4At(path, 0, sizeMiB * 1024, files);
}
