/**
 * Sets of Unicode code points as sorted, disjoint, non-adjacent inclusive ranges, flattened:
 * `[lo0, hi0, lo1, hi1, ...]`. Surrogates (U+D800..U+DFFF) are never characters of a text (they cannot be
 * written in UTF-8), so `ANY` and complements leave them out.
 */
export type CharSet = readonly number[];

export const MAX_CODE_POINT = 0x10ffff;
export const EMPTY: CharSet = [];
export const ANY: CharSet = [0, 0xd7ff, 0xe000, MAX_CODE_POINT];

export function charRange(lo: number, hi: number): CharSet {
  return intersect([lo, hi], ANY);
}

export function chars(text: string): CharSet {
  let set: CharSet = EMPTY;
  for (const c of text) {
    const cp = c.codePointAt(0) as number;
    set = union(set, [cp, cp]);
  }
  return set;
}

/** The union of sets given as ranges in any order (overlapping or adjacent ranges merged). */
function normalize(pairs: number[][]): CharSet {
  pairs.sort((a, b) => (a[0] as number) - (b[0] as number));
  const out: number[] = [];
  for (const [lo, hi] of pairs as [number, number][]) {
    if (lo > hi) continue;
    const last = out.length - 1;
    if (last > 0 && lo <= (out[last] as number) + 1) out[last] = Math.max(out[last] as number, hi);
    else out.push(lo, hi);
  }
  return out;
}

function pairsOf(set: CharSet): number[][] {
  const pairs: number[][] = [];
  for (let i = 0; i < set.length; i += 2) pairs.push([set[i] as number, set[i + 1] as number]);
  return pairs;
}

export function union(a: CharSet, b: CharSet): CharSet {
  return normalize([...pairsOf(a), ...pairsOf(b)]);
}

export function intersect(a: CharSet, b: CharSet): CharSet {
  const out: number[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const lo = Math.max(a[i] as number, b[j] as number);
    const hi = Math.min(a[i + 1] as number, b[j + 1] as number);
    if (lo <= hi) out.push(lo, hi);
    if ((a[i + 1] as number) < (b[j + 1] as number)) i += 2;
    else j += 2;
  }
  return out;
}

/** The characters of ANY not in set. */
export function complement(set: CharSet): CharSet {
  const out: number[] = [];
  let next = 0;
  for (let i = 0; i < set.length; i += 2) {
    if ((set[i] as number) > next) out.push(next, (set[i] as number) - 1);
    next = (set[i + 1] as number) + 1;
  }
  if (next <= MAX_CODE_POINT) out.push(next, MAX_CODE_POINT);
  return intersect(out, ANY);
}

export function subtract(a: CharSet, b: CharSet): CharSet {
  return intersect(a, complement(b));
}

export function isEmpty(set: CharSet): boolean {
  return set.length === 0;
}

export function contains(set: CharSet, cp: number): boolean {
  for (let i = 0; i < set.length; i += 2)
    if (cp >= (set[i] as number) && cp <= (set[i + 1] as number)) return true;
  return false;
}

/** ASCII letters in both cases: a set closed under ASCII case folding. */
export function asciiCaseless(set: CharSet): CharSet {
  let out = set;
  const lower = intersect(set, [0x61, 0x7a]);
  const upper = intersect(set, [0x41, 0x5a]);
  for (let i = 0; i < lower.length; i += 2)
    out = union(out, [(lower[i] as number) - 32, (lower[i + 1] as number) - 32]);
  for (let i = 0; i < upper.length; i += 2)
    out = union(out, [(upper[i] as number) + 32, (upper[i + 1] as number) + 32]);
  return out;
}
