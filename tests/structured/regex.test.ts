/**
 * Patterns against ECMAScript's own RegExp (with the u flag, as JSON Schema means them): on random strings
 * over each pattern's alphabet, the automaton accepts exactly what RegExp.test finds (search) and what
 * a whole-string match finds (fullMatch).
 */
import { describe, expect, test } from "bun:test";
import { Budget } from "../../src/structured/budget.ts";
import { type CharDfa, dfaAccepts } from "../../src/structured/char-automaton.ts";
import { fullMatchDfa, RegexError, searchDfa } from "../../src/structured/regex.ts";

const accepts = (dfa: CharDfa | null, text: string): boolean => dfa !== null && dfaAccepts(dfa, text);

const PATTERNS = [
  "abc",
  "^abc$",
  "^a|b$",
  "a*b+c?",
  "^(ab|cd){2,3}$",
  "[a-c]{2}x",
  "[^a]b",
  "^\\d{3}-\\d{2}$",
  "\\w+\\s\\W",
  "^.{0,3}$",
  "a.c",
  "^[\\d.]+$",
  "(?:x|y)(?<n>z)?$",
  "^(a|)b",
  "^$",
  "^\\u00e9+\\u{1F600}?$",
  "[\\-\\]a]+",
  "colou?r",
  "^a{2,}$",
  "[^\\d\\s]",
  "\\x41\\t",
  "^[a-f0-9]{4}(-[a-f0-9]{2})*$",
  "a{3}b{0,2}",
  "^(?:(?:25[0-5]|2[0-4]\\d|1?\\d?\\d)\\.){3}(?:25[0-5]|2[0-4]\\d|1?\\d?\\d)$",
];

/** A random string over the characters that matter to a pattern, and a few others. */
function randomString(seed: number, alphabet: string[]): string {
  let x = seed;
  const next = () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x;
  };
  const length = next() % 9;
  let out = "";
  for (let i = 0; i < length; i++) out += alphabet[next() % alphabet.length];
  return out;
}

describe("ECMAScript patterns", () => {
  for (const pattern of PATTERNS) {
    test(`/${pattern}/ accepts what RegExp does`, () => {
      const search = searchDfa(pattern, new Budget(5000));
      const full = fullMatchDfa(pattern, new Budget(5000));
      const re = new RegExp(pattern, "u");
      const whole = new RegExp(`^(?:${pattern})$`, "u");
      const alphabet = [
        ...new Set([
          ...pattern.replace(/\\[a-zA-Z]/g, ""),
          "a",
          "b",
          "c",
          "x",
          "0",
          "5",
          " ",
          "\n",
          "-",
          ".",
          "é",
          "😀",
          "_",
        ]),
      ];
      for (let seed = 1; seed <= 400; seed++) {
        const text = randomString(seed * 7919 + pattern.length, alphabet);
        expect({ text, search: accepts(search, text) }).toEqual({ text, search: re.test(text) });
        expect({ text, full: accepts(full, text) }).toEqual({ text, full: whole.test(text) });
      }
    });
  }

  test("features a grammar cannot enforce are refused by name", () => {
    for (const [pattern, named] of [
      ["(?=a)b", "look-around"],
      ["(?<!a)b", "look-around"],
      ["(a)\\1", "back-references"],
      ["\\bword", "word boundaries"],
      ["\\p{L}", "Unicode property"],
    ] as const) {
      expect(() => searchDfa(pattern, new Budget(1000))).toThrow(RegexError);
      expect(() => searchDfa(pattern, new Budget(1000))).toThrow(named);
    }
  });
});
