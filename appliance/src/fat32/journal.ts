/**
 * The write-back journal: a flush turns the host's changes into a plan of idempotent operations
 * (apply.ts) and runs it through here, so that a killed agent never leaves the source half-applied.
 *
 * Directory layout (default `<source>/.bridge-fat32`, which must be on the source's file system
 * because staged files are renamed into the tree):
 *   blob        data of the plan's `write` operations
 *   new-N       contents of new files, renamed into place by the plan
 *   mv-N        entries parked while moves are reordered (a swap of two names needs a third place)
 *   plan.json   the operations; written (tmp + fsync + rename + fsync of the directory) only after
 *               blob and new-N are fsynced: its presence means "everything needed is durable"
 *   progress    one line per finished operation, fdatasynced after each
 * Once every operation ran and the touched files and directories are fsynced, the directory is
 * removed. At start (`recover`), a plan.json left by a crash is run from its recorded progress to the
 * end (each operation is idempotent, so the one in flight at the crash may run again), then removed;
 * without a plan.json the directory is stale staging and is removed.
 */
import { promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { applyOp, syncTouched, type ApplyContext, type Op } from './apply.js';
import { fsyncPath, writeFileAtomic } from '../durable.js';

export const DEFAULT_JOURNAL_NAME = '.bridge-fat32';

interface PlanFile {
  version: 1;
  sourceRoot: string;
  ops: Op[];
}

export class Journal {
  /** True when the journal directory is a child of the source root (the scan and the parse keep its name out of the volume). */
  readonly inSource: boolean;
  readonly name: string;

  constructor(
    readonly dir: string,
    readonly sourceRoot: string,
    private readonly log: Logger,
  ) {
    this.inSource = dirname(dir) === sourceRoot;
    this.name = basename(dir);
  }

  get blobPath(): string {
    return join(this.dir, 'blob');
  }

  staged(name: string): string {
    return join(this.dir, name);
  }

  /** Creates an empty journal directory for a new plan (removing leftovers of an aborted one). */
  async begin(): Promise<void> {
    await this.clear();
    await fsp.mkdir(this.dir, { recursive: true });
  }

  /**
   * Removes the journal's own files, then the directory if that leaves it empty: a journal pointed at
   * a directory that holds anything else never deletes it.
   */
  private async clear(): Promise<void> {
    let names: string[];
    try {
      names = await fsp.readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    for (const n of names) {
      if (/^(blob|progress|plan\.json(\.tmp)?|new-\d+|mv-\d+)$/.test(n)) await fsp.rm(join(this.dir, n), { recursive: true, force: true });
    }
    await fsp.rmdir(this.dir).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT' && e.code !== 'ENOTEMPTY' && e.code !== 'EEXIST') throw e;
    });
  }

  /** Makes the plan durable; from here on it will be completed even across a crash. */
  async commit(ops: Op[]): Promise<void> {
    const plan: PlanFile = { version: 1, sourceRoot: this.sourceRoot, ops };
    await fsp.mkdir(this.dir, { recursive: true });
    await writeFileAtomic(join(this.dir, 'plan.json'), Buffer.from(JSON.stringify(plan)));
  }

  /** Runs ops[start..] recording progress, fsyncs what changed, then removes the journal. Returns notes. */
  async run(ops: Op[], start = 0): Promise<string[]> {
    const ctx: ApplyContext = { sourceRoot: this.sourceRoot, journalDir: this.dir, blob: this.blobPath, notes: [], touched: new Set() };
    const progress = await fsp.open(join(this.dir, 'progress'), 'a');
    try {
      for (let i = start; i < ops.length; i++) {
        await applyOp(ops[i]!, ctx);
        await progress.write(`${i}\n`);
        await progress.datasync();
      }
    } finally {
      await progress.close();
    }
    await syncTouched(ctx);
    await this.finish();
    return ctx.notes;
  }

  /** Removes the journal directory (its plan is done or was never committed). */
  async finish(): Promise<void> {
    await this.clear();
    await fsyncPath(dirname(this.dir)).catch(() => undefined);
  }

  /**
   * Completes a plan a crash interrupted (called before the source is scanned). Returns the number of
   * operations run (0 when the plan had finished all of them), or undefined when there was no plan.
   */
  async recover(): Promise<number | undefined> {
    let text: string;
    try {
      text = await fsp.readFile(join(this.dir, 'plan.json'), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      // No committed plan: whatever is there is staging of a flush that was never acknowledged.
      await this.clear();
      return undefined;
    }
    let plan: PlanFile;
    try {
      plan = JSON.parse(text) as PlanFile;
    } catch (e) {
      throw new BridgeError('EIO', `write-back journal ${this.dir}/plan.json is unreadable: ${errorMessage(e)}; move it away to start without it`);
    }
    if (plan.version !== 1 || plan.sourceRoot !== this.sourceRoot) {
      throw new BridgeError('EINVAL', `write-back journal ${this.dir} belongs to source ${plan.sourceRoot}, not ${this.sourceRoot}`);
    }
    let done = -1;
    try {
      for (const line of (await fsp.readFile(join(this.dir, 'progress'), 'utf8')).split('\n')) if (/^\d+$/.test(line)) done = Math.max(done, Number(line));
    } catch {
      /* no progress yet */
    }
    const remaining = plan.ops.length - (done + 1);
    this.log.warn('completing a write-back plan interrupted by a crash', { journal: this.dir, ops: plan.ops.length, remaining });
    const notes = await this.run(plan.ops, done + 1);
    for (const n of notes) this.log.warn('write-back note', { note: n });
    return remaining;
  }
}
