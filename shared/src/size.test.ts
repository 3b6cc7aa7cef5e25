import { describe, expect, it } from 'vitest';
import { formatSize, parseSize } from './size.js';

describe('sizes', () => {
  it('parses binary units', () => {
    expect(parseSize('512')).toBe(512);
    expect(parseSize('128K')).toBe(131072);
    expect(parseSize('1.5G')).toBe(1.5 * 1024 ** 3);
    expect(parseSize('64MiB')).toBe(64 * 1024 ** 2);
    expect(parseSize(4096)).toBe(4096);
  });
  it('names the input in its error', () => {
    expect(() => parseSize('12Q', '--cache-size')).toThrow('--cache-size: expected a size like 512, 128K, 64M or 1G, got "12Q"');
    expect(() => parseSize(-1, '--size')).toThrow(/--size/);
  });
  it('formats', () => {
    expect(formatSize(1536)).toBe('1.50 KiB');
    expect(formatSize(100)).toBe('100 B');
  });
});
