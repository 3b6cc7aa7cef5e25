/**
 * The one logger of bridge. Text lines for people by default, JSON lines on request (`json: true`),
 * always to stderr so that stdout stays free for command output and `--json` results.
 * Fields whose names look like secrets are redacted before anything is written.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';
const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export interface LoggerOptions {
  level?: LogLevel;
  json?: boolean;
  /** Where lines go; stderr by default. */
  write?: (line: string) => void;
}

export type LogFields = Record<string, unknown>;

const SECRET_KEY = /pass(word|phrase)?|secret|token|credential|private.?key|^key$|authorization/i;

export function redact(fields: LogFields): LogFields {
  const out: LogFields = {};
  for (const [k, v] of Object.entries(fields)) {
    if (SECRET_KEY.test(k)) out[k] = '[redacted]';
    else if (v instanceof Error) out[k] = v.message;
    else if (v && typeof v === 'object' && !Array.isArray(v)) out[k] = redact(v as LogFields);
    else out[k] = v;
  }
  return out;
}

export class Logger {
  private readonly rank: number;
  private readonly json: boolean;
  private readonly write: (line: string) => void;

  constructor(
    private readonly options: LoggerOptions = {},
    private readonly bindings: LogFields = {},
  ) {
    this.rank = RANK[options.level ?? 'info'];
    this.json = options.json ?? false;
    this.write = options.write ?? ((line) => process.stderr.write(line + '\n'));
  }

  /** A logger that adds `bindings` (e.g. `{ component: 'fuse' }`) to every line. */
  child(bindings: LogFields): Logger {
    return new Logger(this.options, { ...this.bindings, ...bindings });
  }

  enabled(level: LogLevel): boolean {
    return RANK[level] >= this.rank;
  }

  debug(msg: string, fields?: LogFields): void {
    this.log('debug', msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.log('info', msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.log('warn', msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.log('error', msg, fields);
  }

  private log(level: LogLevel, msg: string, fields: LogFields = {}): void {
    if (RANK[level] < this.rank) return;
    const all = redact({ ...this.bindings, ...fields });
    if (this.json) {
      this.write(JSON.stringify({ time: new Date().toISOString(), level, msg, ...all }));
      return;
    }
    const extra = Object.entries(all)
      .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join(' ');
    this.write(`${level.padEnd(5)} ${msg}${extra ? ' ' + extra : ''}`);
  }
}

let root = new Logger({ level: (process.env.BRIDGE_LOG_LEVEL as LogLevel | undefined) ?? 'info', json: process.env.BRIDGE_LOG_JSON === '1' });

/** The process-wide logger; CLIs call `configureLogger` once from their flags. */
export function logger(): Logger {
  return root;
}

export function configureLogger(options: LoggerOptions): Logger {
  root = new Logger(options);
  return root;
}
