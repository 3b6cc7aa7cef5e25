/**
 * Name rules of the synthesized volume: how a source file name becomes a VFAT long name and a
 * unique 8.3 short name. The rules (written out in docs/fat32.md) are:
 *
 * 1. Names that are not valid UTF-8 are left out (the caller checks, it holds the raw bytes).
 * 2. Characters FAT forbids in long names (`" * / : < > ? \ |` and control characters) become `_`.
 * 3. Trailing dots and spaces are removed (Windows ignores them); a name that becomes empty is left out.
 * 4. Names longer than 255 UTF-16 units are left out.
 * 5. FAT compares names case-insensitively. In each directory, names that needed no mapping are
 *    placed first, then mapped ones, each group in code-unit order; a name equal (ignoring case) to
 *    one already placed is left out.
 * 6. Every entry gets an 8.3 short name. A name whose upper-case form is a valid 8.3 name keeps it
 *    (with a long name entry when the case differs); others get the Microsoft basis name with a
 *    `~N` numeric tail, N counting up per basis until it collides with no short name in the directory.
 */

/** Why a name was left out, or undefined when it maps. */
export type NameProblem = 'empty after removing trailing dots and spaces' | 'longer than 255 UTF-16 units';

export interface MappedName {
  /** The long name shown on the volume. */
  name: string;
  /** True when `name` differs from the source name. */
  mapped: boolean;
}

// Control characters are forbidden in long names too: the rule is about them, hence the lint exception.
// eslint-disable-next-line no-control-regex
const FORBIDDEN_LONG = /["*/:<>?\\|\u0000-\u001f]/;
// eslint-disable-next-line no-control-regex
const FORBIDDEN_LONG_ALL = /["*/:<>?\\|\u0000-\u001f]/g;

/** Maps a source name to a VFAT long name, or says why it cannot be one. */
export function mapLongName(source: string): MappedName | NameProblem {
  let name = FORBIDDEN_LONG.test(source) ? source.replace(FORBIDDEN_LONG_ALL, '_') : source;
  let end = name.length;
  while (end > 0 && (name.charCodeAt(end - 1) === 0x2e || name.charCodeAt(end - 1) === 0x20)) end--;
  if (end < name.length) name = name.slice(0, end);
  if (name.length === 0) return 'empty after removing trailing dots and spaces';
  if (name.length > 255) return 'longer than 255 UTF-16 units';
  return { name, mapped: name !== source };
}

/**
 * Upper-cases per UTF-16 unit, keeping units whose upper case is longer (ß) or a different length:
 * a stable key for case-insensitive comparison in the way FAT's per-character up-case table works.
 */
export function foldCase(name: string): string {
  const up = name.toUpperCase();
  if (up.length === name.length) return up; // the common case: no unit grew
  let out = '';
  for (const ch of name) {
    const up = ch.toUpperCase();
    out += up.length === ch.length ? up : ch;
  }
  return out;
}

/** Characters allowed in 8.3 names besides A-Z and 0-9 (ASCII only: we never use OEM code pages). */
const SHORT_SPECIAL = new Set("$%'-_@~`!(){}^#&".split(''));

function isShortChar(c: string): boolean {
  return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || SHORT_SPECIAL.has(c);
}

/**
 * The 11-byte short name field for base and extension (space padded), as an 11-character latin1
 * string (a string costs a fraction of a Buffer per entry). A leading 0xE5 would read as "deleted"
 * and is stored as 0x05, as the specification says (unreachable with our ASCII-only short names).
 */
export function shortNameField(base: string, ext: string): string {
  const field = base.padEnd(8, ' ').slice(0, 8) + ext.padEnd(3, ' ').slice(0, 3);
  return field.charCodeAt(0) === 0xe5 ? '\x05' + field.slice(1) : field;
}

/** The exact 8.3 form of `name` when its upper-case form is a valid short name, else undefined. */
export function exactShortName(name: string): { base: string; ext: string } | undefined {
  const up = name.toUpperCase();
  if (up.length === 0 || up.length > 12 || up === '.' || up === '..') return undefined;
  const dot = up.indexOf('.');
  const base = dot < 0 ? up : up.slice(0, dot);
  const ext = dot < 0 ? '' : up.slice(dot + 1);
  if (base.length < 1 || base.length > 8 || ext.length > 3 || ext.includes('.')) return undefined;
  if (dot >= 0 && ext.length === 0) return undefined;
  for (const c of base + ext) if (!isShortChar(c)) return undefined;
  return { base, ext };
}

/** The Microsoft basis name (before the numeric tail) of a long name that has no exact 8.3 form. */
export function basisName(name: string): { base: string; ext: string } {
  const conv = (s: string): string => {
    let out = '';
    for (const ch of s.toUpperCase()) {
      if (ch === ' ' || ch === '.') continue; // spaces and embedded periods are dropped
      out += isShortChar(ch) ? ch : '_';
    }
    return out;
  };
  const stripped = name.replace(/^\.+/, '');
  const dot = stripped.lastIndexOf('.');
  let base = conv(dot < 0 ? stripped : stripped.slice(0, dot)).slice(0, 8);
  const ext = dot < 0 ? '' : conv(stripped.slice(dot + 1)).slice(0, 3);
  if (base.length === 0) base = '_';
  return { base, ext };
}

/**
 * Hands out short names for one directory. Exact names are reserved first (`reserve`), then tailed
 * names are generated (`tailed`), each distinct from every name handed out before.
 */
export class ShortNameAllocator {
  private readonly taken = new Set<string>();
  /** Next tail number to try per basis, so 20,000 similar names stay linear. */
  private readonly nextTail = new Map<string, number>();

  /** Claims an exact short name; false when it is already taken. */
  reserve(base: string, ext: string): boolean {
    const key = `${base}.${ext}`;
    if (this.taken.has(key)) return false;
    this.taken.add(key);
    return true;
  }

  /** A fresh `BASE~N.EXT` for the basis; throws when a directory exhausts all ~N (never for ≤ 65,536 entries). */
  tailed(base: string, ext: string): { base: string; ext: string } {
    const basisKey = `${base}.${ext}`;
    for (let n = this.nextTail.get(basisKey) ?? 1; n <= 999_999; n++) {
      const tail = `~${n}`;
      // Microsoft uses at most 6 basis characters before the tail, fewer as the tail grows.
      const candidate = base.slice(0, Math.min(6, 8 - tail.length)) + tail;
      const key = `${candidate}.${ext}`;
      if (!this.taken.has(key)) {
        this.taken.add(key);
        this.nextTail.set(basisKey, n + 1);
        return { base: candidate, ext };
      }
    }
    throw new Error(`no free short name for basis ${basisKey}`);
  }
}

/** The checksum of an 11-byte short name, stored in each of its long-name entries. */
export function lfnChecksum(shortName: Uint8Array | string): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) {
    const c = typeof shortName === 'string' ? shortName.charCodeAt(i) : shortName[i]!;
    sum = (((sum & 1) << 7) + (sum >> 1) + c) & 0xff;
  }
  return sum;
}

/** Number of 32-byte long-name entries a name needs (13 UTF-16 units each). */
export function lfnSlots(name: string): number {
  return Math.ceil(name.length / 13);
}
