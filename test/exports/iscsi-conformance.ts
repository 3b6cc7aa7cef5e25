/** Runs libiscsi's conformance suite (iscsi-test-cu) and parses each test's outcome. */
import { sh } from '../daemon/agent-process.js';

export type Outcome = 'passed' | 'failed' | 'skipped';

/**
 * Per-test outcomes, keyed "Suite.Test". The suite prints "[SKIPPED]" for skipped tests (and counts
 * them as passed), "[FAILED]" for failed assertions and a bare "FAILED" for a failed test; a test
 * that logs "[FAILED]" and then "passed" passed (a non-fatal check).
 */
export function parseConformance(text: string): Map<string, Outcome> {
  const out = new Map<string, Outcome>();
  let suite = '';
  let test = '';
  let block: string[] = [];
  const close = (): void => {
    if (!test) return;
    const body = block.join('\n');
    const outcome: Outcome = /\[SKIPPED\]/.test(body) ? 'skipped' : /(^|\.\.\.|\s)FAILED\s*$/m.test(body.replace(/\[FAILED\]/g, '')) ? 'failed' : 'passed';
    out.set(`${suite}.${test}`, outcome);
    test = '';
    block = [];
  };
  for (const line of text.split('\n')) {
    const s = /^Suite: (\S+)/.exec(line);
    const t = /^\s+Test: (\S+) \.\.\.(.*)$/.exec(line);
    if (s || t || /^Run Summary/.test(line)) close();
    if (s) suite = s[1]!;
    else if (t) {
      test = t[1]!;
      block = [t[2]!];
    } else if (test) block.push(line);
  }
  close();
  return out;
}

export async function runConformance(url: string, initiator1: string, initiator2: string): Promise<Map<string, Outcome>> {
  const r = await sh('iscsi-test-cu', ['-d', '-i', initiator1, '-I', initiator2, '-t', 'ALL', url], undefined, 600_000);
  const results = parseConformance(r.stdout + '\n' + r.stderr);
  if (results.size < 100) throw new Error(`iscsi-test-cu ran only ${results.size} tests:\n${(r.stdout + r.stderr).slice(-2000)}`);
  return results;
}
