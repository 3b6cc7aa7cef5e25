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
  | { id: number; method: 'shutdown' };

export type ControlResponse = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: { code: ErrorCode | 'ERROR'; message: string } };

/** The result of one response line, or the agent's error as a BridgeError (prefixing its message). */
export function controlResult(line: string, messagePrefix = ''): unknown {
  const res = JSON.parse(line) as ControlResponse;
  if (res.ok) return res.result;
  throw new BridgeError(res.error.code === 'ERROR' ? 'EIO' : res.error.code, messagePrefix + res.error.message);
}
