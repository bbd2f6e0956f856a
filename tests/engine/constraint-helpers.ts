/**
 * Constraint programs from a readable description, small vocabularies, and the brute-force mask: what the
 * constraint tests build their cases with.
 */
import {
  ConstraintGrammar,
  ConstraintMatcher,
  ConstraintVocab,
  MLR_CONSTRAINT,
} from "../../src/engine/constraint-native.ts";
import { BYTE_TO_CHAR, buildDemoTokenizer } from "../../src/engine/demo-tokenizer.ts";

/** A byte edge: [lo, hi, target] (characters or byte values), or [characters, target]: one edge per character. */
export type Edge = [lo: string | number, hi: string | number, to: number] | [chars: string, to: number];

/** A state of a rule; targets and return states are the rule's own state indices (0 = its start). */
export interface StateSpec {
  accept?: boolean;
  bytes?: Edge[];
  /** [callee rule, return state]. */
  calls?: [number, number][];
}

const code = (c: string | number) => (typeof c === "number" ? c : (c.codePointAt(0) as number));

/** The int32 program of rules (each a list of states, the first its start), with `root` as the root rule. */
export function buildProgram(rules: StateSpec[][], root = 0): Int32Array {
  const base: number[] = [];
  let n = 0;
  for (const r of rules) {
    base.push(n);
    n += r.length;
  }
  const states: number[] = [];
  const bytes: number[] = [];
  const calls: number[] = [];
  rules.forEach((rule, r) => {
    for (const s of rule) {
      const edges: [number, number, number][] = [];
      for (const e of s.bytes ?? []) {
        if (e.length === 2) for (const ch of e[0]) edges.push([code(ch), code(ch), e[1]]);
        else edges.push([code(e[0]), code(e[1]), e[2]]);
      }
      edges.sort((a, b) => a[0] - b[0]);
      states.push(
        r,
        s.accept ? 1 : 0,
        bytes.length / 3,
        edges.length,
        calls.length / 2,
        s.calls?.length ?? 0,
      );
      for (const [lo, hi, to] of edges) bytes.push(lo, hi, (base[r] as number) + to);
      for (const [callee, ret] of s.calls ?? []) calls.push(callee, (base[r] as number) + ret);
    }
  });
  return Int32Array.from([
    MLR_CONSTRAINT.MAGIC,
    MLR_CONSTRAINT.VERSION,
    rules.length,
    n,
    bytes.length / 3,
    calls.length / 2,
    root,
    ...base,
    ...states,
    ...bytes,
    ...calls,
  ]);
}

/** A rule matching exactly `text`. */
export function literal(text: string): StateSpec[] {
  const states: StateSpec[] = [...text].map((ch, i) => ({ bytes: [[ch, i + 1] as Edge] }));
  states.push({ accept: true });
  return states;
}

const utf8 = (s: string) => new TextEncoder().encode(s);

/** A vocabulary of these strings (ids in order); `excluded` ids never allowed. */
export function vocabOf(tokens: readonly string[], excluded: readonly number[] = []): ConstraintVocab {
  const flags = new Uint8Array(tokens.length);
  for (const id of excluded) flags[id] = 1;
  return ConstraintVocab.create(tokens.map(utf8), flags);
}

/** The demo tokenizer's vocabulary as bytes (512 ids), its added tokens excluded. */
export function demoVocabBytes(): { tokens: Uint8Array[]; excluded: Uint8Array } {
  const json = buildDemoTokenizer() as {
    model: { vocab: Record<string, number> };
    added_tokens: { id: number }[];
  };
  const fromChar = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));
  const size = 512;
  const tokens: Uint8Array[] = Array.from({ length: size }, () => new Uint8Array(0));
  for (const [token, id] of Object.entries(json.model.vocab))
    tokens[id] = Uint8Array.from(token, (c) => fromChar.get(c) ?? 0);
  const excluded = new Uint8Array(size);
  for (const t of json.added_tokens) {
    excluded[t.id] = 1;
    tokens[t.id] = utf8(`<special ${t.id}>`);
  }
  return { tokens, excluded };
}

/** The allowed ids of a mask. */
export function maskIds(mask: Uint32Array, size: number): number[] {
  const ids: number[] = [];
  for (let id = 0; id < size; id++) if (((mask[id >> 5] as number) >>> (id & 31)) & 1) ids.push(id);
  return ids;
}

/** The mask's ids, from the native mask. */
export function allowedIds(m: ConstraintMatcher): { ids: number[]; complete: boolean } {
  const mask = new Uint32Array(m.maskWords);
  const complete = m.fillMask(mask);
  return { ids: maskIds(mask, m.grammar.vocab.size), complete };
}

/** The reference: every token whose bytes a copy of the matcher accepts. */
export function bruteForceIds(m: ConstraintMatcher): number[] {
  const ids: number[] = [];
  for (let id = 0; id < m.grammar.vocab.size; id++) {
    const copy = m.clone();
    if (copy.accept(id)) ids.push(id);
    copy.free();
  }
  return ids;
}

/** A matcher at the start of a fresh grammar of `program` over `vocab`. */
export function matcherOf(vocab: ConstraintVocab, program: Int32Array): ConstraintMatcher {
  return ConstraintMatcher.create(ConstraintGrammar.create(vocab, program));
}

/** A rule matching exactly one of `words` (a trie of them). */
export function choice(words: string[]): StateSpec[] {
  const states: StateSpec[] = [{}];
  for (const w of words) {
    let s = 0;
    for (const ch of w) {
      const edges = (states[s] as StateSpec).bytes ?? [];
      const found = edges.find((e) => e[0] === ch);
      if (found) s = found[1] as number;
      else {
        states.push({});
        edges.push([ch, states.length - 1]);
        (states[s] as StateSpec).bytes = edges;
        s = states.length - 1;
      }
    }
    (states[s] as StateSpec).accept = true;
  }
  return states;
}
