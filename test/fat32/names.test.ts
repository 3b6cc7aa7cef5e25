/** Name and directory-entry rules, checked against values other tools produce. */
import { describe, expect, it } from 'vitest';
import { fatTime, writeLfnEntries } from '../../appliance/src/fat32/dirent.js';
import { basisName, exactShortName, lfnChecksum, mapLongName, shortNameField, ShortNameAllocator } from '../../appliance/src/fat32/names.js';

describe('FAT32 names', () => {
  it('computes the long-name checksum mtools writes (E-_     TXT -> 0x9b)', () => {
    expect(lfnChecksum(Buffer.from('E-_     TXT', 'latin1'))).toBe(0x9b);
    expect(lfnChecksum(shortNameField('README', 'TXT'))).toBe(lfnChecksum(Buffer.from('README  TXT', 'latin1')));
  });

  it('stores characters outside the BMP as UTF-16 surrogate pairs, 0x0000 then 0xFFFF padding', () => {
    const buf = Buffer.alloc(64);
    const end = writeLfnEntries(buf, 0, 'e-😀.txt', shortNameField('E-_', 'TXT'));
    expect(end).toBe(32);
    expect(buf[0]).toBe(0x41); // last (and only) entry, number 1
    const units = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30].map((o) => buf.readUInt16LE(o));
    expect(units).toEqual([0x65, 0x2d, 0xd83d, 0xde00, 0x2e, 0x74, 0x78, 0x74, 0, 0xffff, 0xffff, 0xffff, 0xffff]);
  });

  it('maps forbidden characters and trailing dots/spaces, refuses what cannot be a name', () => {
    expect(mapLongName('a:b?c|d')).toEqual({ name: 'a_b_c_d', mapped: true });
    expect(mapLongName('name. .')).toEqual({ name: 'name', mapped: true });
    expect(mapLongName('  lead')).toEqual({ name: '  lead', mapped: false });
    expect(mapLongName('...')).toMatch(/empty/);
    expect(mapLongName('x'.repeat(256))).toMatch(/255/);
  });

  it('keeps exact 8.3 names and builds Microsoft basis names for the rest', () => {
    expect(exactShortName('readme.txt')).toEqual({ base: 'README', ext: 'TXT' });
    expect(exactShortName('a.b.c')).toBeUndefined();
    expect(exactShortName('toolongname.txt')).toBeUndefined();
    expect(exactShortName('a+b.txt')).toBeUndefined();
    expect(basisName('My Document.text')).toEqual({ base: 'MYDOCUME', ext: 'TEX' });
    expect(basisName('.bashrc')).toEqual({ base: 'BASHRC', ext: '' });
    expect(basisName('a+b[1].txt')).toEqual({ base: 'A_B_1_', ext: 'TXT' });
    expect(basisName('日本.txt')).toEqual({ base: '__', ext: 'TXT' });
  });

  it('never hands out the same short name twice, even for 20,000 names sharing a basis', () => {
    const a = new ShortNameAllocator();
    expect(a.reserve('FILE~1', 'TXT')).toBe(true);
    const seen = new Set<string>(['FILE~1.TXT']);
    for (let i = 0; i < 20000; i++) {
      const s = a.tailed('FILE', 'TXT');
      const key = `${s.base}.${s.ext}`;
      expect(s.base.length).toBeLessThanOrEqual(8);
      expect(seen.has(key)).toBe(false);
      seen.add(key);
    }
    expect(seen.has('FILE~2.TXT')).toBe(true);
    expect(seen.has('FI~10000.TXT')).toBe(true);
  });

  it('encodes times at 2-second resolution and clamps to 1980..2107', () => {
    const t = fatTime(new Date(2024, 1, 29, 13, 45, 31, 250).getTime());
    expect(t.date).toBe(((2024 - 1980) << 9) | (2 << 5) | 29);
    expect(t.time).toBe((13 << 11) | (45 << 5) | 15);
    expect(t.tenths).toBe(125);
    expect(fatTime(0).date).toBe((0 << 9) | (1 << 5) | 1);
    expect(fatTime(new Date(2300, 0, 1).getTime()).date).toBe((127 << 9) | (12 << 5) | 31);
  });
});
