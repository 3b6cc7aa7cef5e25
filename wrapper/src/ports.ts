/** Host ports for the NAT forwards: picked by the OS, distinct, and not recorded by another instance. */
import { createServer } from 'node:net';
import type { ForwardName, PortForward } from './hypervisors/backend.js';

export function osFreePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/**
 * One free host port per forward. `taken` holds ports other instances recorded (their VM may not be
 * listening yet); `pick` is injectable for tests.
 */
export async function allocateForwards(
  wanted: { name: ForwardName; guestPort: number }[],
  taken: Set<number>,
  pick: () => Promise<number> = osFreePort,
): Promise<PortForward[]> {
  const used = new Set(taken);
  const out: PortForward[] = [];
  for (const w of wanted) {
    let port = await pick();
    for (let tries = 0; used.has(port) && tries < 50; tries++) port = await pick();
    used.add(port);
    out.push({ name: w.name, hostPort: port, guestPort: w.guestPort });
  }
  return out;
}
