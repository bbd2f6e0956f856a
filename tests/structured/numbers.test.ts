/**
 * Number automata against exact decimal arithmetic (BigInt): for random bounds, multiples and number
 * texts, the automaton accepts a text exactly when it is JSON number syntax the grammar writes (no
 * exponent when bounded, no fraction for integers) and its value satisfies the keywords.
 */
import { describe, expect, test } from "bun:test";
import { Budget } from "../../src/structured/budget.ts";
import { type CharDfa, dfaAccepts } from "../../src/structured/char-automaton.ts";
import { decimalOf, numberDfa } from "../../src/structured/numbers.ts";

const accepts = (dfa: CharDfa | null, text: string): boolean => dfa !== null && dfaAccepts(dfa, text);

/** value * 10^SCALE as a BigInt (exact for texts with at most SCALE fraction digits). */
const SCALE = 12;
function scaled(text: string): bigint {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text) as RegExpExecArray;
  const frac = (m[3] ?? "").padEnd(SCALE, "0");
  const v = BigInt((m[2] as string) + frac);
  return m[1] ? -v : v;
}

function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

const SYNTAX = /^-?(?:0|[1-9]\d*)(?:\.\d+)?$/;

describe("numbers with bounds and multipleOf", () => {
  test("random keyword sets agree with exact arithmetic on random texts", () => {
    const r = rng(42);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
    const bounds = [0, 1, -1, 2.5, -2.5, 10, -10, 0.1, 100, -0.01, 7, 1.75];
    const multiples = [1, 2, 3, 0.5, 0.25, 0.1, 5, 1.5];
    let checked = 0;
    for (let round = 0; round < 60; round++) {
      const integer = r() < 0.3;
      const min = r() < 0.6 ? { n: pick(bounds), exclusive: r() < 0.5 } : null;
      const max = r() < 0.6 ? { n: pick(bounds), exclusive: r() < 0.5 } : null;
      const multiple = r() < 0.4 ? pick(multiples) : null;
      const dfa = numberDfa(
        {
          integer,
          minimum: min && { value: decimalOf(min.n), exclusive: min.exclusive },
          maximum: max && { value: decimalOf(max.n), exclusive: max.exclusive },
          multipleOf: multiple === null ? null : decimalOf(multiple),
        },
        new Budget(10_000),
      );
      for (let k = 0; k < 300; k++) {
        const sign = r() < 0.4 ? "-" : "";
        const int = r() < 0.3 ? "0" : String(Math.floor(r() * (r() < 0.5 ? 20 : 2000)));
        const frac =
          r() < 0.5 ? "" : `.${String(Math.floor(r() * 1000)).padStart(Math.floor(r() * 3) + 1, "0")}`;
        const text = `${sign}${int}${frac}`;
        let expected = SYNTAX.test(text) && !(integer && frac);
        const v = scaled(text);
        if (min) expected &&= min.exclusive ? v > scaled(String(min.n)) : v >= scaled(String(min.n));
        if (max) expected &&= max.exclusive ? v < scaled(String(max.n)) : v <= scaled(String(max.n));
        if (multiple !== null) expected &&= v % scaled(String(multiple)) === 0n;
        expect({ text, integer, min, max, multiple, accepted: accepts(dfa, text) }).toEqual({
          text,
          integer,
          min,
          max,
          multiple,
          accepted: expected,
        });
        checked++;
      }
    }
    expect(checked).toBe(18_000);
  });

  test("unbounded numbers take JSON's whole syntax, exponents included; -0 and leading zeros as JSON says", () => {
    const any = numberDfa(
      { integer: false, minimum: null, maximum: null, multipleOf: null },
      new Budget(1000),
    );
    for (const ok of ["0", "-0", "1.5", "1e5", "1E+5", "-2.5e-3", "10"])
      expect([ok, accepts(any, ok)]).toEqual([ok, true]);
    for (const bad of ["01", "1.", ".5", "+1", "1e", "--1", "1.5.2", ""])
      expect([bad, accepts(any, bad)]).toEqual([bad, false]);
    const int = numberDfa(
      { integer: true, minimum: { value: decimalOf(0), exclusive: false }, maximum: null, multipleOf: null },
      new Budget(1000),
    );
    expect(["0", "-0", "7", "-1", "1.0", "1e2"].map((t) => accepts(int, t))).toEqual([
      true,
      true,
      true,
      false,
      false,
      false,
    ]);
  });

  test("bounds written with exponents (1e-7, 1e21) are read exactly", () => {
    expect(decimalOf(1e-7)).toEqual({ negative: false, int: "0", frac: "0000001" });
    expect(decimalOf(1e21)).toEqual({ negative: false, int: "1000000000000000000000", frac: "" });
    expect(decimalOf(-2.5e-3)).toEqual({ negative: true, int: "0", frac: "0025" });
    expect(decimalOf(-0)).toEqual({ negative: false, int: "0", frac: "" });
  });
});
