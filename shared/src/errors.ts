/**
 * Errors that cross module boundaries. Each carries a stable `code` so that callers (the FUSE layer,
 * the CLI, the host wrapper over the protocol) can map it without parsing messages.
 */

export type ErrorCode =
  | 'EIO' // data could not be read or written (corrupt chunk, store failure)
  | 'ERANGE' // I/O outside a device's bounds
  | 'EROFS' // write to a read-only device or export
  | 'EINVAL' // bad argument
  | 'ENOTSUP' // operation the implementation does not support
  | 'EBUSY' // resource in use (mountpoint, volume lock)
  | 'ENOENT' // named thing does not exist
  | 'EACCES' // wrong credentials or permissions
  | 'CONFIG' // configuration file invalid
  | 'CLOSED'; // object used after close

/** POSIX errno values for the codes that reach the kernel through FUSE. */
export const ERRNO: Record<ErrorCode, number> = {
  EIO: 5,
  ERANGE: 34,
  EROFS: 30,
  EINVAL: 22,
  ENOTSUP: 95,
  EBUSY: 16,
  ENOENT: 2,
  EACCES: 13,
  CONFIG: 22,
  CLOSED: 9,
};

export class BridgeError extends Error {
  readonly code: ErrorCode;
  /** Extra machine-readable facts (field path, chunk index, ...). Never secrets. */
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(message, options);
    this.name = 'BridgeError';
    this.code = code;
    this.details = details;
  }

  toJSON(): { code: ErrorCode; message: string; details: Record<string, unknown> } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

export function isBridgeError(e: unknown, code?: ErrorCode): e is BridgeError {
  return e instanceof BridgeError && (code === undefined || e.code === code);
}

/** The errno to hand to the kernel for any thrown value: unknown failures become EIO, never success. */
export function errnoOf(e: unknown): number {
  if (e instanceof BridgeError) return ERRNO[e.code];
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && code in ERRNO) return ERRNO[code as ErrorCode];
  return ERRNO.EIO;
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
