/**
 * The agent's control protocol. The daemon (`bridge-agent serve`) listens on a Unix socket in its
 * private runtime directory; `bridge-agent status|secret|config|stop` are thin clients of it, and the
 * host wrapper runs those commands over SSH. One request per line, one response per line (JSON),
 * each at most MAX_FRAME bytes. Secret values travel only in `putSecret` and are never logged.
 */
import { BridgeError, type ErrorCode } from './errors.js';

export const MAX_FRAME = 1024 * 1024;
export const CONTROL_SOCKET = 'control.sock';

export type Health = 'starting' | 'ok' | 'degraded' | 'failed' | 'stopped';

export interface ComponentStatus {
  name: string;
  kind: string;
  health: Health;
  /** Why it is not ok, in words a user can act on. */
  error?: string;
  details?: Record<string, unknown>;
}

export interface Endpoint {
  protocol: 'smb' | 'nfs' | 'iscsi';
  address: string;
  port: number;
  /** SMB share name, NFS export path or iSCSI target IQN. */
  path: string;
  /** e.g. smb://127.0.0.1:445/share, nfs://127.0.0.1:2049/export, iscsi://127.0.0.1:3260/iqn.../1 */
  url: string;
}

export interface ExportStatus extends ComponentStatus {
  endpoint?: Endpoint;
}

export interface AgentStatus {
  version: string;
  /** The appliance image's version stamp, when running inside the appliance. */
  imageVersion?: string;
  ready: boolean;
  /** A template's agent before `configure`: no sources, stages or exports yet. */
  awaitingConfiguration?: boolean;
  pid: number;
  uptimeSeconds: number;
  sources: ComponentStatus[];
  stages: ComponentStatus[];
  exports: ExportStatus[];
}

export type ControlRequest =
  | { id: number; method: 'status' }
  | { id: number; method: 'putSecret'; params: { name: string; value: string } }
  | { id: number; method: 'setCacheSize'; params: { source?: string; bytes: number } }
  | { id: number; method: 'reload' }
  | { id: number; method: 'shutdown' }
  | { id: number; method: 'configure'; params: ConfigureParams }
  | { id: number; method: 'probeRandom' };

/**
 * `configure`: the one request a template's agent waits for after a restore. It makes the restored
 * copy an instance: its SSH key (replacing the template's), its hostname, its agent configuration;
 * fresh host entropy and the host's clock are applied again (the restore seed already did both).
 */
export interface ConfigureParams {
  /** The agent configuration (validated in full by the agent; secrets only as {"pushed": NAME}). */
  agent: unknown;
  /** Instance name, the guest's hostname. */
  name: string;
  /** The instance's OpenSSH public key line: afterwards sshd accepts it and no other. */
  sshAuthorizedKey: string;
  /** The host's clock, milliseconds since the epoch. */
  timeMs: number;
  /** At least 32 random bytes from the host, hex. */
  entropy: string;
}

export interface ConfigureResult {
  hostname: string;
  /** How far the guest clock was stepped (ms; 0 when it was within a second). */
  clockStepMs: number;
}

/** `probeRandom`: fresh output of the agent's random sources, to prove two restored copies differ. */
export interface RandomProbe {
  /** crypto.randomBytes(16) on the main thread (OpenSSL's public DRBG of that thread). */
  mainThread: string;
  /** crypto.randomBytes(16) on a libuv pool thread (that thread's DRBG). */
  poolThread: string;
  /** crypto.randomUUID() (Node keeps a batch of them). */
  uuid: string;
}

export type ControlResponse = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: { code: ErrorCode | 'ERROR'; message: string } };

/** The result of one response line, or the agent's error as a BridgeError (prefixing its message). */
export function controlResult(line: string, messagePrefix = ''): unknown {
  const res = JSON.parse(line) as ControlResponse;
  if (res.ok) return res.result;
  throw new BridgeError(res.error.code === 'ERROR' ? 'EIO' : res.error.code, messagePrefix + res.error.message);
}
