/**
 * Where an NBD export listens: a Unix socket (`unix:PATH`, or any value with a `/`) or TCP
 * (`HOST:PORT`, `[V6]:PORT`, `:PORT`; host 127.0.0.1 by default). Exports need credentials: a Unix
 * socket is made mode 0600 (only its owner, root in the appliance, may connect); TCP is accepted on a
 * loopback address only, because this server offers no TLS (NBD has no other authentication).
 */
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { BridgeError } from '../../../shared/src/errors.js';

export type NbdAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export function parseNbdAddress(spec: string): NbdAddress {
  const bad = (why: string): BridgeError =>
    new BridgeError('EINVAL', `NBD address "${spec}": ${why} (expected a Unix socket path, unix:PATH, HOST:PORT or :PORT)`);
  if (spec.startsWith('unix:')) {
    if (spec.length === 5) throw bad('the socket path is empty');
    return { kind: 'unix', path: resolve(spec.slice(5)) };
  }
  if (spec.includes('/')) return { kind: 'unix', path: resolve(spec) };
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(spec);
  if (!m) throw bad('no port');
  const host = m[1] ?? (m[2] || '127.0.0.1');
  const port = Number(m[3]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw bad(`port ${m[3]} is not 1-65535`);
  if (!isLoopback(host)) {
    throw bad(
      `${host} is not a loopback address; NBD has no authentication and this server no TLS, so TCP is served on 127.0.0.1 or ::1 only (use a Unix socket or an SSH tunnel to reach it from elsewhere)`,
    );
  }
  return { kind: 'tcp', host: host === 'localhost' ? '127.0.0.1' : host, port };
}

export function isLoopback(host: string): boolean {
  if (host === 'localhost' || host === '::1') return true;
  return isIP(host) === 4 && host.startsWith('127.');
}

/** The NBD URI clients (nbdinfo, nbdcopy, qemu-img) take for an address. */
export function nbdUri(a: NbdAddress, exportName = ''): string {
  const name = encodeURIComponent(exportName);
  if (a.kind === 'unix') return `nbd+unix:///${name}?socket=${encodeURIComponent(a.path).replace(/%2F/g, '/')}`;
  const host = a.host.includes(':') ? `[${a.host}]` : a.host;
  return `nbd://${host}:${a.port}/${name}`;
}
