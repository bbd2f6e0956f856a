/**
 * JSON numbers as automata: the number syntax (RFC 8259) with bounds (minimum, maximum, exclusive ones)
 * and multipleOf enforced digit by digit, exactly, on the decimal text (no floating point).
 *
 * A bounded or multipleOf number is written without an exponent (a language of numbers below a bound with
 * exponents is not regular); an integer has neither fraction nor exponent (1.0 is refused: the grammar is
 * allowed to be stricter than the schema, never looser). Digits are capped (`MAX_*_DIGITS`) so that a
 * generation cannot run on in one number.
 */
import { MultiloraError } from "../errors.ts";
import type { Budget } from "./budget.ts";
import { type CharDfa, dfaFromMachine, minimize } from "./char-automaton.ts";

export const MAX_INT_DIGITS = 20;
export const MAX_FRAC_DIGITS = 20;
export const MAX_EXP_DIGITS = 3;
/** multipleOf p·10^-d is enforced for p up to this (the automaton tracks a remainder mod p). */
export const MAX_MULTIPLE = 1000;

/** A decimal: sign, integer digits without leading zeros ("0" for zero), fraction without trailing zeros. */
export interface Decimal {
  negative: boolean;
  int: string;
  frac: string;
}

export function decimalOf(n: number): Decimal {
  if (!Number.isFinite(n))
    throw new MultiloraError(`the bound ${n} is not a finite number`, { code: "invalid_schema" });
  const negative = n < 0;
  let text = Math.abs(n).toString();
  const exp = /^(\d+)(?:\.(\d+))?e([+-]\d+)$/.exec(text);
  if (exp) {
    const digits = (exp[1] as string) + (exp[2] ?? "");
    const point = (exp[1] as string).length + Number(exp[3]);
    text =
      point <= 0
        ? `0.${"0".repeat(-point)}${digits}`
        : point >= digits.length
          ? digits + "0".repeat(point - digits.length)
          : `${digits.slice(0, point)}.${digits.slice(point)}`;
  }
  const [int, frac = ""] = text.split(".") as [string, string?];
  const i = int.replace(/^0+(?=\d)/, "");
  const f = frac.replace(/0+$/, "");
  return { negative: negative && (i !== "0" || f !== ""), int: i, frac: f };
}

function isZero(d: Decimal): boolean {
  return d.int === "0" && d.frac === "";
}

export interface Bound {
  value: Decimal;
  exclusive: boolean;
}

export interface NumberConstraints {
  integer: boolean;
  minimum: Bound | null;
  maximum: Bound | null;
  multipleOf: Decimal | null;
}

/** Magnitude comparison of the digits read so far with a bound's magnitude. */
interface Cmp {
  frac: boolean; // reading the fraction
  k: number; // digits compared (integer digits capped at bound length + 1; fraction at bound's)
  c: number; // -1, 0, 1: less, equal, greater so far
}

const sign = (x: number) => (x < 0 ? -1 : x > 0 ? 1 : 0);

function cmpDigit(cmp: Cmp, bound: Decimal, d: number): Cmp {
  if (!cmp.frac) {
    if (cmp.k >= bound.int.length) return { ...cmp, k: bound.int.length + 1 };
    const c = cmp.c !== 0 ? cmp.c : sign(d - Number(bound.int[cmp.k]));
    return { frac: false, k: cmp.k + 1, c };
  }
  if (cmp.c !== 0) return cmp;
  const bd = cmp.k < bound.frac.length ? Number(bound.frac[cmp.k]) : 0;
  return { frac: true, k: Math.min(cmp.k + 1, bound.frac.length), c: sign(d - bd) };
}

function cmpPoint(cmp: Cmp, bound: Decimal): Cmp {
  const n = bound.int.length;
  return { frac: true, k: 0, c: cmp.k < n ? -1 : cmp.k > n ? 1 : cmp.c };
}

function cmpEnd(cmp: Cmp, bound: Decimal): number {
  const at = cmp.frac ? cmp : cmpPoint(cmp, bound);
  return at.c === 0 && at.k < bound.frac.length ? -1 : at.c;
}

/** x >= / > minimum, from x's sign and the comparison r of |x| with |minimum|. */
function aboveMinimum(negative: boolean, r: number, b: Bound): boolean {
  if (!negative) return b.value.negative ? true : b.exclusive ? r > 0 : r >= 0;
  if (!b.value.negative) return !b.exclusive && isZero(b.value) && r === 0;
  return b.exclusive ? r < 0 : r <= 0;
}

/** x <= / < maximum. */
function belowMaximum(negative: boolean, r: number, b: Bound): boolean {
  if (!negative) return b.value.negative ? false : b.exclusive ? r < 0 : r <= 0;
  if (!b.value.negative) return isZero(b.value) && b.exclusive ? r > 0 : true;
  return b.exclusive ? r > 0 : r >= 0;
}

type Phase = "start" | "minus" | "zero" | "int" | "point" | "frac" | "e" | "esign" | "exp";

interface Reader {
  phase: Phase;
  negative: boolean;
  digits: number; // in the current part
  lo: Cmp | null;
  hi: Cmp | null;
  rem: number; // value mod p of the digits that count for multipleOf
  fracSeen: number; // fraction digits that count (up to d)
  bad: boolean; // a nonzero fraction digit past d
}

const ALPHABET = [..."0123456789.-+eE"].map((c) => c.codePointAt(0) as number);

/** multipleOf m as p·10^-d: p (the significant digits) and d. */
export function multipleParts(m: Decimal): { p: number; d: number } {
  return { p: Number((m.int + m.frac).replace(/^0+/, "") || "0"), d: m.frac.length };
}

/** Number automata already built, by their constraints (schemas repeat the same few). */
const built = new Map<string, CharDfa | null>();
const MAX_BUILT = 512;

/** The DFA of the numbers a schema's number keywords allow. */
export function numberDfa(c: NumberConstraints, budget: Budget): CharDfa | null {
  const key = JSON.stringify(c);
  if (built.has(key)) return built.get(key) as CharDfa | null;
  const dfa = buildNumberDfa(c, budget);
  if (built.size >= MAX_BUILT) built.delete(built.keys().next().value as string);
  built.set(key, dfa);
  return dfa;
}

function buildNumberDfa(c: NumberConstraints, budget: Budget): CharDfa | null {
  const lo = c.minimum;
  const hi = c.maximum;
  const multiple = c.multipleOf;
  let p = 0;
  let d = 0;
  if (multiple) {
    ({ p, d } = multipleParts(multiple));
    if (p === 0 || multiple.negative) {
      throw new MultiloraError("multipleOf must be greater than 0", { code: "invalid_schema" });
    }
    if (p > MAX_MULTIPLE) {
      throw new MultiloraError(`multipleOf with significant digits above ${MAX_MULTIPLE}`, {
        code: "unsupported_schema",
      });
    }
  }
  const exponent = !c.integer && !lo && !hi && !multiple;
  const start: Reader = {
    phase: "start",
    negative: false,
    digits: 0,
    lo: lo && { frac: false, k: 0, c: 0 },
    hi: hi && { frac: false, k: 0, c: 0 },
    rem: 0,
    fracSeen: 0,
    bad: false,
  };
  const intDigit = (r: Reader, digit: number, phase: Phase): Reader | null => {
    if (r.digits >= MAX_INT_DIGITS) return null;
    return {
      ...r,
      phase,
      digits: r.digits + 1,
      lo: lo && cmpDigit(r.lo as Cmp, lo.value, digit),
      hi: hi && cmpDigit(r.hi as Cmp, hi.value, digit),
      rem: p ? (r.rem * 10 + digit) % p : 0,
    };
  };
  const step = (r: Reader, cp: number): Reader | null => {
    const ch = String.fromCodePoint(cp);
    const digit = ch >= "0" && ch <= "9" ? cp - 48 : -1;
    switch (r.phase) {
      case "start":
        if (ch === "-") return { ...r, phase: "minus", negative: true };
        if (digit === 0) return intDigit(r, 0, "zero");
        return digit > 0 ? intDigit(r, digit, "int") : null;
      case "minus":
        if (digit === 0) return intDigit(r, 0, "zero");
        return digit > 0 ? intDigit(r, digit, "int") : null;
      case "zero":
      case "int":
        if (digit >= 0 && r.phase === "int") return intDigit(r, digit, "int");
        if (ch === "." && !c.integer) {
          return {
            ...r,
            phase: "point",
            digits: 0,
            lo: lo && cmpPoint(r.lo as Cmp, lo.value),
            hi: hi && cmpPoint(r.hi as Cmp, hi.value),
          };
        }
        if ((ch === "e" || ch === "E") && exponent) return { ...r, phase: "e", digits: 0 };
        return null;
      case "point":
      case "frac":
        if (digit >= 0) {
          if (r.digits >= MAX_FRAC_DIGITS) return null;
          const counts = p > 0 && r.fracSeen < d;
          return {
            ...r,
            phase: "frac",
            digits: r.digits + 1,
            lo: lo && cmpDigit(r.lo as Cmp, lo.value, digit),
            hi: hi && cmpDigit(r.hi as Cmp, hi.value, digit),
            rem: counts ? (r.rem * 10 + digit) % p : r.rem,
            fracSeen: counts ? r.fracSeen + 1 : r.fracSeen,
            bad: r.bad || (p > 0 && !counts && digit !== 0),
          };
        }
        if ((ch === "e" || ch === "E") && exponent && r.phase === "frac")
          return { ...r, phase: "e", digits: 0 };
        return null;
      case "e":
        if (ch === "+" || ch === "-") return { ...r, phase: "esign" };
        return digit >= 0 ? { ...r, phase: "exp", digits: 1 } : null;
      case "esign":
      case "exp":
        return digit >= 0 && r.digits < MAX_EXP_DIGITS ? { ...r, phase: "exp", digits: r.digits + 1 } : null;
    }
  };
  const accepting = (r: Reader): boolean => {
    if (r.phase !== "zero" && r.phase !== "int" && r.phase !== "frac" && r.phase !== "exp") return false;
    if (lo && !aboveMinimum(r.negative, cmpEnd(r.lo as Cmp, lo.value), lo)) return false;
    if (hi && !belowMaximum(r.negative, cmpEnd(r.hi as Cmp, hi.value), hi)) return false;
    if (p > 0) {
      if (r.bad) return false;
      let rem = r.rem;
      for (let i = r.fracSeen; i < d; i++) rem = (rem * 10) % p;
      if (rem !== 0) return false;
    }
    return true;
  };
  const keyOf = (r: Reader) =>
    `${r.phase}|${r.negative ? 1 : 0}|${r.digits}|${r.lo ? `${r.lo.frac ? 1 : 0}.${r.lo.k}.${r.lo.c}` : ""}|${
      r.hi ? `${r.hi.frac ? 1 : 0}.${r.hi.k}.${r.hi.c}` : ""
    }|${r.rem}|${r.fracSeen}|${r.bad ? 1 : 0}`;
  return minimize(dfaFromMachine(start, ALPHABET, step, accepting, keyOf, budget));
}
