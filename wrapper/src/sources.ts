/**
 * `--source` specs as the user writes them, parsed into what the VM needs (disks, folder shares) and
 * what the agent needs (source entries). Forms, optionally prefixed with `NAME=`:
 *   disk:PATH[:ro]          an image file or block device, attached as a virtio disk (serial bridge-srcN)
 *   store:s3://BUCKET/PFX   a chunked store in S3 (`--endpoint URL`; 127.0.0.1 is rewritten for the guest)
 *   store:dir:PATH          a chunked store in a host folder (shared into the guest)
 *   dir:PATH[:ro]           a host folder (shared into the guest)
 */
import { existsSync, statSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { BridgeError } from '../../shared/src/errors.js';

export type SourceSpec =
  | { kind: 'disk'; name: string; path: string; readOnly: boolean }
  | { kind: 's3'; name: string; url: string }
  | { kind: 'store-dir'; name: string; path: string }
  | { kind: 'dir'; name: string; path: string; readOnly: boolean };

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,30}$/;

/** A share-friendly name from a path: "data.img" → "data". */
export function nameFromPath(path: string, fallback: string): string {
  const base = basename(path).replace(/\.(img|raw|qcow2|vmdk|vdi|vhdx|iso|bin)$/i, '');
  const clean = base
    .replace(/[^A-Za-z0-9_.-]/g, '-')
    .replace(/^[^A-Za-z0-9]+/, '')
    .slice(0, 31);
  return NAME_RE.test(clean) ? clean : fallback;
}

export function parseSourceSpec(spec: string, index: number): SourceSpec {
  let text = spec;
  let name: string | undefined;
  const eq = /^([A-Za-z0-9][A-Za-z0-9_.-]*)=(.*)$/.exec(spec);
  if (eq && !eq[1]!.includes(':')) {
    name = eq[1]!;
    text = eq[2]!;
    if (!NAME_RE.test(name)) throw new BridgeError('EINVAL', `--source ${spec}: name "${name}" must be letters, digits, "_", "." or "-" (at most 31)`);
  }
  const fallback = `src${index + 1}`;
  const colon = text.indexOf(':');
  const kind = colon < 0 ? '' : text.slice(0, colon);
  const rest = colon < 0 ? '' : text.slice(colon + 1);
  const ro = (p: string): { path: string; readOnly: boolean } => (p.endsWith(':ro') ? { path: p.slice(0, -3), readOnly: true } : { path: p, readOnly: false });
  switch (kind) {
    case 'disk': {
      const { path, readOnly } = ro(rest);
      if (!path) throw new BridgeError('EINVAL', `--source ${spec}: expected disk:PATH[:ro]`);
      const abs = resolve(path);
      if (!existsSync(abs)) throw new BridgeError('ENOENT', `--source ${spec}: ${abs} does not exist`);
      const st = statSync(abs);
      if (!st.isFile() && !st.isBlockDevice()) throw new BridgeError('EINVAL', `--source ${spec}: ${abs} is neither a disk image file nor a block device`);
      return { kind: 'disk', name: name ?? nameFromPath(abs, fallback), path: abs, readOnly };
    }
    case 'dir': {
      const { path, readOnly } = ro(rest);
      const abs = resolve(path || '.');
      if (!existsSync(abs) || !statSync(abs).isDirectory()) throw new BridgeError('ENOENT', `--source ${spec}: ${abs} is not a directory`);
      return { kind: 'dir', name: name ?? nameFromPath(abs, fallback), path: abs, readOnly };
    }
    case 'store': {
      if (/^s3:\/\/[^/]+(\/.*)?$/.test(rest)) {
        const bucket = /^s3:\/\/([^/]+)/.exec(rest)![1]!;
        return { kind: 's3', name: name ?? nameFromPath(bucket, fallback), url: rest };
      }
      if (rest.startsWith('dir:') && rest.length > 4) {
        const abs = resolve(rest.slice(4));
        if (!existsSync(abs) || !statSync(abs).isDirectory()) throw new BridgeError('ENOENT', `--source ${spec}: store folder ${abs} is not a directory`);
        return { kind: 'store-dir', name: name ?? nameFromPath(abs, fallback), path: abs };
      }
      throw new BridgeError('EINVAL', `--source ${spec}: expected store:s3://BUCKET/PREFIX or store:dir:PATH`);
    }
    default:
      throw new BridgeError(
        'EINVAL',
        `--source ${spec}: unknown kind "${kind}"; expected disk:PATH[:ro], store:s3://BUCKET/PREFIX, store:dir:PATH or dir:PATH[:ro]`,
      );
  }
}

/** Parses every spec and makes the names unique (data, data-2, ...). */
export function parseSources(specs: string[]): SourceSpec[] {
  const seen = new Set<string>();
  return specs.map((s, i) => {
    const src = parseSourceSpec(s, i);
    let n = src.name;
    for (let k = 2; seen.has(n); k++) n = `${src.name}-${k}`;
    seen.add(n);
    return { ...src, name: n };
  });
}

/**
 * A host-local S3 endpoint is the host's loopback, which the guest cannot reach: rewrite it to the
 * address at which the guest sees the host through the hypervisor's NAT.
 */
export function guestEndpoint(endpoint: string, guestHostAddress: string): string {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new BridgeError('EINVAL', `--endpoint: "${endpoint}" is not a URL (e.g. http://127.0.0.1:9000)`);
  }
  if (['127.0.0.1', 'localhost', '[::1]', '::1'].includes(url.hostname) || url.hostname.startsWith('127.')) {
    if (guestHostAddress === 'gateway') {
      throw new BridgeError(
        'ENOTSUP',
        `--endpoint ${endpoint}: this hypervisor's NAT has no fixed host address; use the host's LAN address instead of ${url.hostname}`,
      );
    }
    url.hostname = guestHostAddress;
  }
  return url.toString().replace(/\/$/, endpoint.endsWith('/') ? '/' : '');
}
