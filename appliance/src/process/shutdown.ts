/**
 * Orderly shutdown for long-running agent commands: cleanups run once, in reverse order of
 * registration, on SIGINT/SIGTERM or a fatal error. A second signal while shutting down is ignored
 * (the first shutdown is still flushing); on a fatal error, FUSE mounts are also cleared lazily
 * with a child process so that nothing is left mounted even if a cleanup hangs.
 */
import { execFileSync } from 'node:child_process';
import { errorMessage } from '../../../shared/src/errors.js';
import { logger } from '../../../shared/src/logger.js';

type Cleanup = { name: string; run: () => Promise<void>; mountpoint?: string };

const cleanups: Cleanup[] = [];
let shuttingDown: Promise<void> | undefined;
let installed = false;

export function onShutdown(name: string, run: () => Promise<void>, mountpoint?: string): void {
  cleanups.push({ name, run, ...(mountpoint ? { mountpoint } : {}) });
  install();
}

export function shutdown(reason: string, code = 0): Promise<void> {
  shuttingDown ??= (async () => {
    const log = logger().child({ component: 'shutdown' });
    log.info('shutting down', { reason });
    let failed = false;
    while (cleanups.length) {
      const c = cleanups.pop()!;
      try {
        await c.run();
      } catch (e) {
        failed = true;
        log.error(`cleanup "${c.name}" failed`, { error: errorMessage(e) });
        if (c.mountpoint) emergencyUnmount(c.mountpoint);
      }
    }
    process.exitCode = failed && code === 0 ? 1 : code;
    finished();
  })();
  return shuttingDown;
}

let finished: () => void = () => undefined;
const stopped = new Promise<void>((resolve) => (finished = resolve));

/** Resolves when the process has been asked to stop and its cleanups have run. */
export function untilShutdown(): Promise<void> {
  install();
  return stopped;
}

function emergencyUnmount(mountpoint: string): void {
  try {
    execFileSync('fusermount', ['-uz', mountpoint], { stdio: 'ignore' });
  } catch {
    /* already gone */
  }
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGHUP', () => void shutdown('SIGHUP'));
  // A closed stdout/stderr (the parent went away) must not become a fatal error that logs to the
  // same closed stream, forever.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  let fatalSeen = false;
  const fatal = (e: unknown): void => {
    if (fatalSeen) return;
    fatalSeen = true;
    logger().error('fatal error', { error: errorMessage(e), stack: e instanceof Error ? e.stack : undefined });
    void shutdown('fatal error', 1).finally(() => {
      for (const c of cleanups) if (c.mountpoint) emergencyUnmount(c.mountpoint);
      process.exit(1);
    });
  };
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
}
