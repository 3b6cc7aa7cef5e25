/** A CommandRunner that records every command and answers from a script (for backend unit tests). */
import type { CommandRunner, RunOptions, RunResult } from '../../wrapper/src/runner.js';

export interface Call {
  cmd: string;
  args: string[];
  input?: string;
}

export type Responder = (call: Call) => Partial<RunResult> | undefined;

export class FakeRunner implements CommandRunner {
  readonly calls: Call[] = [];

  constructor(
    readonly platform: NodeJS.Platform = 'linux',
    private readonly programs: string[] = [],
    private readonly respond: Responder = () => undefined,
  ) {}

  which(cmd: string): string | undefined {
    return this.programs.includes(cmd) ? `/usr/bin/${cmd}` : undefined;
  }

  async run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
    const call: Call = { cmd, args, ...(opts.input !== undefined ? { input: opts.input.toString() } : {}) };
    this.calls.push(call);
    const r = { code: 0, stdout: '', stderr: '', ...(this.respond(call) ?? {}) };
    if (r.code !== 0 && opts.check !== false) throw new Error(`${cmd} failed (exit ${r.code})`);
    return r;
  }

  /** Command lines as strings, for readable assertions. */
  lines(): string[] {
    return this.calls.map((c) => [c.cmd, ...c.args].join(' '));
  }
}
