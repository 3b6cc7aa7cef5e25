/**
 * `configure`: what turns a restored template copy into an instance, after its restore seed
 * (restore.ts) made its randomness, clock and host key its own. The instance's SSH key replaces the
 * template's (the template key is refused from then on), the hostname is set, the host's entropy is
 * mixed in once more and the clock corrected if it drifted; the agent configuration is validated here
 * and then run by `serve` exactly as one read from a config drive.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { INSTANCE_NAME_RE, SSH_PUBLIC_KEY_RE } from '../../../shared/src/config-drive.js';
import { parseAgentConfig, type AgentConfig } from '../../../shared/src/config.js';
import { BridgeError } from '../../../shared/src/errors.js';
import type { ConfigureParams, ConfigureResult } from '../../../shared/src/protocol.js';
import { APPLIANCE_PATHS, setHostname, writeAuthorizedKey, type GuestPaths } from './config-drive.js';
import { parseEntropy, setClockOnce } from './restore.js';

/** A clock further than this from the host's is stepped. */
const CLOCK_TOLERANCE_MS = 1000;

export interface ConfigureOptions {
  /** The runtime directory the agent's control socket already lives in. */
  runtimeDir: string;
  paths?: GuestPaths;
  /** Where host entropy is mixed in (writing /dev/urandom mixes without crediting). */
  urandom?: string;
  setClock?: (timeMs: number) => void;
}

export function applyConfigure(p: ConfigureParams, o: ConfigureOptions): { config: AgentConfig; result: ConfigureResult } {
  const problems: string[] = [];
  if (typeof p?.name !== 'string' || !INSTANCE_NAME_RE.test(p.name)) problems.push('name: a hostname of a-z, 0-9 and "-"');
  if (typeof p?.sshAuthorizedKey !== 'string' || !SSH_PUBLIC_KEY_RE.test(p.sshAuthorizedKey.trim()))
    problems.push('sshAuthorizedKey: an OpenSSH public key line');
  if (typeof p?.timeMs !== 'number' || !Number.isFinite(p.timeMs) || p.timeMs < 1e12) problems.push('timeMs: the host clock in ms since the epoch');
  if (problems.length) throw new BridgeError('EINVAL', problems.map((x) => `configure: ${x}`).join('\n'));
  const entropy = parseEntropy(String(p.entropy ?? ''), 'configure: entropy');
  const config = parseAgentConfig(p.agent, 'configure: agent');
  if (config.runtimeDir !== o.runtimeDir)
    throw new BridgeError('CONFIG', `configure: agent.runtimeDir must be ${o.runtimeDir} (where this agent's control socket is), not ${config.runtimeDir}`);
  const paths = o.paths ?? APPLIANCE_PATHS;
  writeFileSync(o.urandom ?? '/dev/urandom', entropy);
  const step = p.timeMs - Date.now();
  if (Math.abs(step) > CLOCK_TOLERANCE_MS) (o.setClock ?? setClockOnce)(p.timeMs);
  writeAuthorizedKey(p.sshAuthorizedKey, paths);
  setHostname(p.name, paths);
  writeFileSync(join(paths.root, 'run', 'bridge', 'agent.json'), JSON.stringify(p.agent, null, 2) + '\n', { mode: 0o600 });
  return { config, result: { hostname: p.name, clockStepMs: Math.abs(step) > CLOCK_TOLERANCE_MS ? Math.round(step) : 0 } };
}
