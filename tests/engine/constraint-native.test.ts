/**
 * The native constraint matcher (ffi/common/constraint_*.c) through src/engine/constraint-native.ts: program
 * checks, small hand-written languages, and masks equal to the brute-force reference (every token tried on
 * a copy) on random programs and random accepted prefixes.
 */
import { describe, expect, test } from "bun:test";
import {
  ConstraintGrammar,
  ConstraintMatcher,
  ConstraintVocab,
  MLR_CONSTRAINT,
} from "../../src/engine/constraint-native.ts";
import { EngineError } from "../../src/engine/engine.ts";
import { rng } from "../../src/engine/random-checkpoint.ts";
import {
  allowedIds,
  bruteForceIds,
  buildProgram,
  demoVocabBytes,
  type Edge,
  literal,
  matcherOf,
  type StateSpec,
  vocabOf,
} from "./constraint-helpers.ts";

const TOKENS = ["a", "b", "ab", "abc", "c", "bc", "x", "ca", "abca", "cab"];
const id = (t: string) => TOKENS.indexOf(t);
const names = (ids: number[]) => ids.map((i) => TOKENS[i]).sort();

/** The error mlr_grammar_create gives for a program. */
function programError(program: Int32Array): string {
  const vocab = vocabOf(TOKENS);
  try {
    ConstraintGrammar.create(vocab, program).release();
    return "no error";
  } catch (e) {
    expect(e).toBeInstanceOf(EngineError);
    expect((e as EngineError).engineCode).toBe("INVALID_ARGUMENT");
    return (e as Error).message;
  } finally {
    vocab.release();
  }
}

/** A program with the word at `index` replaced. */
function patched(program: Int32Array, index: number, value: number): Int32Array {
  const p = program.slice();
  p[index] = value;
  return p;
}

describe("program checks", () => {
  // [magic, version, rules, states, bytes, calls, root] [rule starts] [states x 6] [bytes x 3] [calls x 2]
  const two = buildProgram([[{ bytes: [["a", 1]], calls: [[1, 1]] }, { accept: true }], literal("b")]);
  const states = 7 + 2; // the first state's words
  const bytes = states + 4 * 6;
  const calls = bytes + 2 * 3;

  test("a well-formed program is accepted", () => {
    expect(programError(two)).toBe("no error");
  });

  test("the header: length, magic, version, counts, root", () => {
    expect(programError(new Int32Array(3))).toContain("its header alone has 7");
    expect(programError(patched(two, 0, 1))).toContain("not the magic 0x47524c4d");
    expect(programError(patched(two, 1, 2))).toContain("version 2; this library reads version 1");
    expect(programError(patched(two, 3, 5))).toContain("the header's counts need");
    expect(programError(patched(two, 6, 2))).toContain("root rule 2 is not one of the 2 rules");
    expect(programError(two.subarray(0, two.length - 1))).toContain("the program has");
  });

  test("indices out of range name the first problem and its index", () => {
    expect(programError(patched(two, 7 + 1, 9))).toContain(
      "rule 1: start state 9 is not one of the 4 states",
    );
    expect(programError(patched(two, states + 6, 7))).toContain("state 1: rule 7 is not one of the 2 rules");
    expect(programError(patched(two, states + 1, 4))).toContain("state 0: unknown flags 0x4");
    expect(programError(patched(two, states + 3, 5))).toContain("state 0: byte edges 0 .. 4 are outside");
    expect(programError(patched(two, states + 5, 2))).toContain("state 0: call edges 0 .. 1 are outside");
    expect(programError(patched(two, bytes + 2, 8))).toContain(
      "byte edge 0 (of state 0): target 8 is not one of the 4 states",
    );
    expect(programError(patched(two, bytes + 1, 300))).toContain("byte edge 0 (of state 0): range 97..300");
    expect(programError(patched(two, calls, 5))).toContain(
      "call edge 0 (of state 0): callee 5 is not one of",
    );
    expect(programError(patched(two, calls + 1, -1))).toContain("call edge 0 (of state 0): return state -1");
  });

  test("targets and return states must be in the source state's rule", () => {
    expect(programError(patched(two, bytes + 2, 2))).toContain(
      "byte edge 0 (of state 0, rule 0): target state 2 belongs to rule 1",
    );
    expect(programError(patched(two, calls + 1, 3))).toContain(
      "call edge 0 (of state 0, rule 0): return state 3 belongs to rule 1",
    );
    expect(programError(patched(two, 7 + 1, 0))).toContain("rule 1: start state 0 belongs to rule 0");
  });

  test("a state's byte edges must be sorted by lo and disjoint", () => {
    const sorted = buildProgram([
      [
        {
          bytes: [
            ["a", "c", 1],
            ["x", 1],
          ],
        },
        { accept: true },
      ],
    ]);
    const edges = 7 + 1 + 2 * 6;
    // swap the two edges: unsorted
    const swapped = sorted.slice();
    swapped.set(sorted.subarray(edges + 3, edges + 6), edges);
    swapped.set(sorted.subarray(edges, edges + 3), edges + 3);
    expect(programError(swapped)).toContain("byte edge 1 (of state 0): range 97..99 is not after");
    // overlapping: a..c then b..x
    expect(programError(patched(sorted, edges + 3, "b".charCodeAt(0)))).toContain(
      "byte edge 1 (of state 0): range 98..120 is not after the previous edge's (..99)",
    );
  });
});

describe("small languages", () => {
  test("a literal: only its prefixes are allowed, and it completes", () => {
    const vocab = vocabOf(TOKENS);
    const m = matcherOf(vocab, buildProgram([literal("abca")]));
    expect(names(allowedIds(m).ids)).toEqual(["a", "ab", "abc", "abca"]);
    expect(m.complete).toBe(false);
    expect(m.canContinue).toBe(true);
    expect(m.accept(id("ab"))).toBe(true);
    expect(names(allowedIds(m).ids)).toEqual(["c", "ca"]);
    expect(m.accept(id("ca"))).toBe(true);
    expect(m.complete).toBe(true);
    expect(m.canContinue).toBe(false);
    expect(allowedIds(m)).toEqual({ ids: [], complete: true });
    m.free();
    vocab.release();
  });

  test("an alternation: the union of the branches' prefixes", () => {
    const vocab = vocabOf(TOKENS);
    // "ab" | "cab" | "x", as one DFA
    const rule: StateSpec[] = [
      {
        bytes: [
          ["a", 1],
          ["c", 3],
          ["x", 2],
        ],
      },
      { bytes: [["b", 2]] },
      { accept: true },
      { bytes: [["a", 1]] },
    ];
    const m = matcherOf(vocab, buildProgram([rule]));
    expect(names(allowedIds(m).ids)).toEqual(["a", "ab", "c", "ca", "cab", "x"]);
    expect(m.accept(id("c"))).toBe(true);
    expect(names(allowedIds(m).ids)).toEqual(["a", "ab"]);
    m.free();
    vocab.release();
  });

  test("a recursive grammar (balanced brackets, by calls) equals the brute force and completes when balanced", () => {
    const tokens = ["(", ")", "()", "((", "))", "(()", ")(", "x", "())", "(())"];
    const vocab = vocabOf(tokens);
    // S -> "" | "(" S ")" S
    const s: StateSpec[] = [
      { accept: true, bytes: [["(", 1]] },
      { calls: [[0, 2]] },
      { bytes: [[")", 3]] },
      { calls: [[0, 4]] },
      { accept: true },
    ];
    const m = matcherOf(vocab, buildProgram([s]));
    const at = (t: string) => tokens.indexOf(t);
    expect(m.complete).toBe(true);
    expect(allowedIds(m).ids.map((i) => tokens[i])).toEqual(["(", "()", "((", "(()", "(())"]);
    for (const [t, complete] of [
      ["((", false],
      ["()", false],
      ["))", true],
      ["(", false],
      [")(", false],
      [")", true],
    ] as const) {
      expect(m.accept(at(t))).toBe(true);
      expect({ t, complete: m.complete }).toEqual({ t, complete });
      expect(allowedIds(m).ids).toEqual(bruteForceIds(m));
    }
    expect(m.accept(at(")"))).toBe(false); // nothing open
    m.free();
    vocab.release();
  });

  test("a refused token leaves the matcher unchanged", () => {
    const vocab = vocabOf(TOKENS);
    const m = matcherOf(vocab, buildProgram([literal("abca")]));
    expect(m.accept(id("a"))).toBe(true);
    const before = allowedIds(m);
    for (const t of ["a", "x", "cab", "c", "ca", "abca"]) expect(m.accept(id(t))).toBe(false);
    expect(m.accept(-1)).toBe(false);
    expect(m.accept(TOKENS.length)).toBe(false);
    expect(allowedIds(m)).toEqual(before);
    expect(m.complete).toBe(false);
    expect(m.canContinue).toBe(true);
    expect(m.accept(id("b"))).toBe(true);
    expect(names(allowedIds(m).ids)).toEqual(["c", "ca"]);
    m.free();
    vocab.release();
  });

  test("excluded and empty tokens are never allowed, even where their bytes fit", () => {
    const tokens = ["a", "a", "", "aa", "b"];
    const vocab = vocabOf(tokens, [0, 3]);
    const many: StateSpec[] = [{ accept: true, bytes: [["ab", 0]] }]; // (a|b)*
    const m = matcherOf(vocab, buildProgram([many]));
    expect(allowedIds(m)).toEqual({ ids: [1, 4], complete: true });
    expect(m.accept(0)).toBe(false);
    expect(m.accept(2)).toBe(false);
    expect(m.accept(3)).toBe(false);
    expect(m.accept(1)).toBe(true);
    m.free();
    vocab.release();
  });

  test("states that can never end are pruned: a token into a dead end is not allowed", () => {
    const vocab = vocabOf(TOKENS);
    // "a" then either "b" (accepting) or "c" into a state with no way out
    const rule: StateSpec[] = [
      { bytes: [["a", 1]] },
      {
        bytes: [
          ["b", 2],
          ["c", 3],
        ],
      },
      { accept: true },
      {},
    ];
    const m = matcherOf(vocab, buildProgram([rule]));
    expect(names(allowedIds(m).ids)).toEqual(["a", "ab"]);
    expect(m.accept(id("ca"))).toBe(false);
    m.free();
    vocab.release();
  });

  test("an empty language allows nothing and is never complete", () => {
    const vocab = vocabOf(TOKENS);
    const m = matcherOf(vocab, buildProgram([[{ bytes: [["a", 1]] }, {}]]));
    expect(allowedIds(m)).toEqual({ ids: [], complete: false });
    expect(m.canContinue).toBe(false);
    m.free();
    vocab.release();
  });

  test("masks clear every word and bit past the vocabulary; a short mask is refused", () => {
    const vocab = vocabOf(TOKENS);
    const m = matcherOf(vocab, buildProgram([[{ accept: true, bytes: [["abcx", 0]] }]]));
    const mask = new Uint32Array(3).fill(0xffffffff);
    expect(m.fillMask(mask)).toBe(true);
    expect(mask[0]).toBe((1 << TOKENS.length) - 1);
    expect([mask[1], mask[2]]).toEqual([0, 0]);
    expect(() => m.fillMask(new Uint32Array(0))).toThrow("needs 1 words");
    m.free();
    vocab.release();
  });

  test("clones are independent, and objects may be released in any order", () => {
    const vocab = vocabOf(TOKENS);
    const grammar = ConstraintGrammar.create(vocab, buildProgram([literal("abca")]));
    const m = ConstraintMatcher.create(grammar);
    vocab.release();
    grammar.release();
    const copy = m.clone();
    expect(copy.accept(id("abc"))).toBe(true);
    expect(names(allowedIds(m).ids)).toEqual(["a", "ab", "abc", "abca"]);
    expect(names(allowedIds(copy).ids)).toEqual(["a"]);
    m.free();
    m.free(); // twice is fine
    expect(copy.accept(id("a"))).toBe(true);
    expect(copy.complete).toBe(true);
    copy.free();
    expect(() => copy.accept(0)).toThrow("already released");
  });

  test("the grammar's bytes count its tables and grow with its mask cache", () => {
    const { tokens, excluded } = demoVocabBytes();
    const vocab = ConstraintVocab.create(tokens, excluded);
    const nested: StateSpec[] = [
      { bytes: [["{", 1]] },
      { calls: [[1, 2]] },
      { bytes: [["}", 3]] },
      { accept: true },
    ];
    const grammar = ConstraintGrammar.create(vocab, buildProgram([nested, stringRule()]));
    const before = grammar.bytes;
    expect(before).toBeGreaterThan(0);
    const m = ConstraintMatcher.create(grammar);
    m.accept(tokens.findIndex((t) => t.length === 1 && t[0] === "{".charCodeAt(0)));
    allowedIds(m);
    expect(grammar.bytes).toBeGreaterThan(before);
    m.free();
    grammar.release();
    vocab.release();
  });
});

/** A JSON-like string: '"' then any of [a-z ] then '"'. A leaf rule (no calls). */
function stringRule(): StateSpec[] {
  return [
    { bytes: [['"', 1]] },
    {
      bytes: [
        ['"', 2],
        ["a", "z", 1],
        [" ", 1],
      ],
    },
    { accept: true },
  ];
}

describe("masks equal the brute force", () => {
  /** Random programs: rules of a few states over `alphabet`, calls only from states other than a rule's
   * start (so no left recursion: every push is followed by a byte). */
  function randomProgram(random: () => number, alphabet: string, callChance = 0.3): Int32Array {
    const nRules = 1 + Math.floor(random() * 3);
    const rules: StateSpec[][] = [];
    for (let r = 0; r < nRules; r++) {
      const n = 2 + Math.floor(random() * 4);
      const states: StateSpec[] = [];
      for (let s = 0; s < n; s++) {
        const chars = [...alphabet].filter(() => random() < 0.35);
        const bytes: Edge[] = [];
        for (const ch of chars) bytes.push([ch, Math.floor(random() * n)]);
        const sorted = [...alphabet].sort();
        if (random() < 0.2)
          bytes.splice(0, bytes.length, [sorted[0] as string, sorted.at(-1) as string, 1 % n]);
        const calls: [number, number][] = [];
        if (s > 0)
          while (random() < callChance && calls.length < 2)
            calls.push([Math.floor(random() * nRules), Math.floor(random() * n)]);
        states.push({ accept: random() < (s === 0 ? 0.15 : 0.3) || s === n - 1, bytes, calls });
      }
      rules.push(states);
    }
    return buildProgram(rules, Math.floor(random() * nRules));
  }

  /** Random tokens over the alphabet (1 to 5 bytes), duplicates, an empty one, one outside it. */
  function randomTokens(random: () => number, alphabet: string): string[] {
    const tokens = [...alphabet, "", "z!"];
    for (let i = 0; i < 140; i++) {
      let t = "";
      const len = 2 + Math.floor(random() * 4);
      for (let k = 0; k < len; k++) t += alphabet[Math.floor(random() * alphabet.length)];
      tokens.push(t);
    }
    tokens.push(tokens[10] as string, tokens[20] as string); // identical bytes, other ids
    return tokens;
  }

  /** Walks `steps` random allowed tokens, checking the mask against the brute force before each. */
  function walk(m: ConstraintMatcher, random: () => number, steps: number): number {
    let checked = 0;
    for (let step = 0; step < steps; step++) {
      const { ids, complete } = allowedIds(m);
      expect(ids).toEqual(bruteForceIds(m));
      expect(complete).toBe(m.complete);
      checked++;
      if (ids.length === 0) break; // (bytes may still follow, but no token has them)
      expect(m.accept(ids[Math.floor(random() * ids.length)] as number)).toBe(true);
    }
    return checked;
  }

  test("on random programs over a synthetic vocabulary of multi-byte tokens", () => {
    const random = rng(7);
    const alphabet = "ab{}";
    let checked = 0;
    for (let p = 0; p < 40; p++) {
      const tokens = randomTokens(random, alphabet);
      const vocab = vocabOf(tokens, [3]);
      const m = matcherOf(vocab, randomProgram(random, alphabet));
      checked += walk(m, random, 12);
      // a second matcher of the same grammar uses the cache the first one filled
      const again = ConstraintMatcher.create(m.grammar);
      checked += walk(again, random, 6);
      again.free();
      m.free();
      vocab.release();
    }
    expect(checked).toBeGreaterThan(200);
  }, 30_000);

  test("on random programs over the demo tokenizer's vocabulary", () => {
    const random = rng(11);
    const { tokens, excluded } = demoVocabBytes();
    const vocab = ConstraintVocab.create(tokens, excluded);
    let checked = 0;
    for (let p = 0; p < 25; p++) {
      const m = ConstraintMatcher.create(
        ConstraintGrammar.create(vocab, randomProgram(random, "aeht ", 0.2)),
      );
      checked += walk(m, random, 10);
      m.free();
    }
    vocab.release();
    expect(checked).toBeGreaterThan(60);
  }, 30_000);

  test("JSON-like nesting with string rules shared by two grammars", () => {
    const { tokens, excluded } = demoVocabBytes();
    const vocab = ConstraintVocab.create(tokens, excluded);
    const random = rng(3);
    // V -> S | "[" (V ("," V)*)? "]" with S the string rule; two grammars that differ only in their root
    const value = (list: number, str: number): StateSpec[] => [
      {
        calls: [
          [str, 1],
          [list, 1],
        ],
      },
      { accept: true },
    ];
    const list = (v: number): StateSpec[] => [
      { bytes: [["[", 1]] },
      { bytes: [["]", 3]], calls: [[v, 2]] },
      {
        bytes: [
          [",", 4],
          ["]", 3],
        ],
      },
      { accept: true },
      { bytes: [[" ", 4]], calls: [[v, 2]] },
    ];
    const first = buildProgram([value(1, 2), list(0), stringRule()]);
    const second = buildProgram([list(1), value(0, 2), stringRule()], 1);
    for (const program of [first, second, first]) {
      const m = ConstraintMatcher.create(ConstraintGrammar.create(vocab, program));
      walk(m, random, 25);
      m.free();
    }
    vocab.release();
  });

  test("near the depth cap, masks still equal the brute force, and deeper readings are dropped", () => {
    const tokens = ["(", "((", "(((", "x", ")", "x)", "))", ")))", "((x"];
    const vocab = vocabOf(tokens);
    // S -> "(" S ")" | "x"
    const s: StateSpec[] = [
      {
        bytes: [
          ["(", 1],
          ["x", 3],
        ],
      },
      { calls: [[0, 2]] },
      { bytes: [[")", 3]] },
      { accept: true },
    ];
    const m = matcherOf(vocab, buildProgram([s]));
    let depth = 0;
    while (m.accept(0)) {
      depth++;
      if (depth > MLR_CONSTRAINT.MAX_DEPTH - 4) expect(allowedIds(m).ids).toEqual(bruteForceIds(m));
      expect(depth).toBeLessThan(MLR_CONSTRAINT.MAX_DEPTH + 4);
    }
    expect(depth).toBeGreaterThanOrEqual(MLR_CONSTRAINT.MAX_DEPTH - 1);
    expect(allowedIds(m).ids).toEqual(bruteForceIds(m));
    m.free();
    vocab.release();
  });
});
