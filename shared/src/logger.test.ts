import { describe, expect, it } from 'vitest';
import { Logger } from './logger.js';

describe('logger', () => {
  it('writes JSON lines with bindings and redacts secrets at any depth', () => {
    const lines: string[] = [];
    const log = new Logger({ json: true, write: (l) => lines.push(l) }).child({ component: 'smb' });
    log.info('user added', { user: 'alice', password: 'hunter2', chap: { secret: 's3' } });
    const rec = JSON.parse(lines[0]!);
    expect(rec).toMatchObject({ level: 'info', msg: 'user added', component: 'smb', user: 'alice', password: '[redacted]', chap: { secret: '[redacted]' } });
    expect(lines[0]).not.toContain('hunter2');
  });
  it('filters by level', () => {
    const lines: string[] = [];
    const log = new Logger({ level: 'warn', write: (l) => lines.push(l) });
    log.info('quiet');
    log.warn('loud', { n: 1 });
    expect(lines).toEqual(['warn  loud n=1']);
  });
});
