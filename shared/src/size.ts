import { BridgeError } from './errors.js';

const UNITS: Record<string, number> = {
  '': 1,
  B: 1,
  K: 1024,
  M: 1024 ** 2,
  G: 1024 ** 3,
  T: 1024 ** 4,
};

/**
 * Parses a size such as `512`, `128K`, `1.5G`, `256MiB` (binary units; `KB`/`KiB` both mean 1024).
 * `what` names the thing being parsed so the error can say which input was wrong.
 */
export function parseSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') {
    if (!Number.isSafeInteger(text) || text < 0) throw new BridgeError('EINVAL', `${what}: expected a whole number of bytes, got ${text}`);
    return text;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new BridgeError('EINVAL', `${what}: expected a size like 512, 128K, 64M or 1G, got "${text}"`);
  const value = Number(m[1]) * (UNITS[(m[2] ?? '').toUpperCase()] ?? 1);
  const bytes = Math.round(value);
  if (!Number.isSafeInteger(bytes)) throw new BridgeError('EINVAL', `${what}: "${text}" is too large`);
  return bytes;
}

/** Human-readable binary size, e.g. 1.5 GiB. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}
