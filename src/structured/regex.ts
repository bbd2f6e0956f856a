/**
 * ECMAScript regular expressions (the subset a grammar can enforce) to automata over code points.
 *
 * Supported: literals and escapes (\t \n \r \f \v \0 \xHH \uHHHH \u{H..} \cX, escaped punctuation),
 * classes [...] with ranges and negation, \d \D \w \W \s \S, `.` (any character but line terminators),
 * groups (capturing, non-capturing, named), alternation, the quantifiers * + ? {n} {n,} {n,m} (greedy or
 * lazy: the same language), and the anchors ^ $. Refused, with the feature named: back-references,
 * look-around, word boundaries, Unicode property escapes.
 *
 * JSON Schema's `pattern` matches anywhere in the string (`search`); a vLLM `regex` matches the whole
 * output (`fullMatch`).
 */
import type { Budget } from "./budget.ts";
import { type CharDfa, CharNfa, determinize } from "./char-automaton.ts";
import { ANY, type CharSet, charRange, chars, complement, union } from "./charset.ts";

type Node =
  | { kind: "set"; set: CharSet }
  | { kind: "seq"; items: Node[] }
  | { kind: "alt"; options: Node[] }
  | { kind: "repeat"; node: Node; min: number; max: number | null }
  | { kind: "bol" }
  | { kind: "eol" };

export class RegexError extends Error {}

const DIGIT = charRange(0x30, 0x39);
const WORD = union(
  union(charRange(0x30, 0x39), union(charRange(0x41, 0x5a), charRange(0x61, 0x7a))),
  [0x5f, 0x5f],
);
const SPACE = [
  0x09, 0x0d, 0x20, 0x20, 0xa0, 0xa0, 0x1680, 0x1680, 0x2000, 0x200a, 0x2028, 0x2029, 0x202f, 0x202f, 0x205f,
  0x205f, 0x3000, 0x3000, 0xfeff, 0xfeff,
];
const LINE_TERMINATORS = chars("\n\r\u2028\u2029");
/** The largest count a quantifier may give ({n,m} copies its operand). */
const MAX_REPEAT = 1000;

class Parser {
  #i = 0;
  constructor(readonly source: string) {}

  parse(): Node {
    const node = this.#alternation();
    if (this.#i < this.source.length) throw new RegexError(`unexpected ')' at ${this.#i}`);
    return node;
  }

  #peek(): string | undefined {
    return this.source[this.#i];
  }

  #fail(what: string): never {
    throw new RegexError(`${what} (at offset ${this.#i} of /${this.source}/)`);
  }

  #alternation(): Node {
    const options = [this.#sequence()];
    while (this.#peek() === "|") {
      this.#i++;
      options.push(this.#sequence());
    }
    return options.length === 1 ? (options[0] as Node) : { kind: "alt", options };
  }

  #sequence(): Node {
    const items: Node[] = [];
    while (this.#i < this.source.length && this.#peek() !== "|" && this.#peek() !== ")") {
      let atom = this.#atom();
      for (;;) {
        const q = this.#quantifier();
        if (!q) break;
        if (atom.kind === "bol" || atom.kind === "eol") this.#fail("a quantifier after an anchor");
        atom = { kind: "repeat", node: atom, min: q.min, max: q.max };
      }
      items.push(atom);
    }
    return items.length === 1 ? (items[0] as Node) : { kind: "seq", items };
  }

  #quantifier(): { min: number; max: number | null } | null {
    const c = this.#peek();
    let q: { min: number; max: number | null } | null = null;
    if (c === "*") q = { min: 0, max: null };
    else if (c === "+") q = { min: 1, max: null };
    else if (c === "?") q = { min: 0, max: 1 };
    if (q) this.#i++;
    else if (c === "{") {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(this.source.slice(this.#i));
      if (!m) return null; // a literal brace (Annex B)
      this.#i += m[0].length;
      const min = Number(m[1]);
      const max = m[2] === undefined ? min : m[3] === "" ? null : Number(m[3]);
      if (max !== null && max < min) this.#fail("a quantifier {n,m} with m < n");
      if (min > MAX_REPEAT || (max ?? 0) > MAX_REPEAT) this.#fail(`a quantifier over ${MAX_REPEAT}`);
      q = { min, max };
    }
    if (q && this.#peek() === "?") this.#i++; // lazy: same language
    return q;
  }

  #atom(): Node {
    const c = this.source[this.#i++] as string;
    if (c === "^") return { kind: "bol" };
    if (c === "$") return { kind: "eol" };
    if (c === ".") return { kind: "set", set: complement(LINE_TERMINATORS) };
    if (c === "[") return { kind: "set", set: this.#class() };
    if (c === "(") {
      if (this.source.startsWith("?:", this.#i)) this.#i += 2;
      else if (this.source.startsWith("?<", this.#i) && !/^\?<[=!]/.test(this.source.slice(this.#i))) {
        const end = this.source.indexOf(">", this.#i);
        if (end < 0) this.#fail("an unterminated group name");
        this.#i = end + 1;
      } else if (this.#peek() === "?") this.#fail("look-around assertions are not supported");
      const inner = this.#alternation();
      if (this.source[this.#i++] !== ")") this.#fail("a missing ')'");
      return inner;
    }
    if (c === ")") this.#fail("an unbalanced ')'");
    if (c === "*" || c === "+" || c === "?") this.#fail(`nothing to repeat before '${c}'`);
    if (c === "\\") return this.#escape(false);
    const cp = this.source.codePointAt(this.#i - 1) as number;
    if (cp > 0xffff) this.#i++;
    return { kind: "set", set: [cp, cp] };
  }

  /** After a backslash: a set (inside a class too). */
  #escape(inClass: boolean): { kind: "set"; set: CharSet } {
    const c = this.source[this.#i++];
    const set = (s: CharSet) => ({ kind: "set" as const, set: s });
    const one = (cp: number) => set([cp, cp]);
    switch (c) {
      case undefined:
        this.#fail("a trailing backslash");
        break;
      case "d":
        return set(DIGIT);
      case "D":
        return set(complement(DIGIT));
      case "w":
        return set(WORD);
      case "W":
        return set(complement(WORD));
      case "s":
        return set(SPACE);
      case "S":
        return set(complement(SPACE));
      case "t":
        return one(9);
      case "n":
        return one(10);
      case "v":
        return one(11);
      case "f":
        return one(12);
      case "r":
        return one(13);
      case "b":
        if (inClass) return one(8);
        this.#fail("word boundaries (\\b) are not supported");
        break;
      case "B":
        this.#fail("word boundaries (\\B) are not supported");
        break;
      case "p":
      case "P":
        this.#fail("Unicode property escapes (\\p{...}) are not supported");
        break;
      case "k":
        this.#fail("back-references are not supported");
        break;
      case "c": {
        const letter = this.source[this.#i];
        if (letter && /[A-Za-z]/.test(letter)) {
          this.#i++;
          return one((letter.codePointAt(0) as number) % 32);
        }
        return one(0x5c); // Annex B: a literal backslash
      }
      case "x": {
        const m = /^[0-9a-fA-F]{2}/.exec(this.source.slice(this.#i));
        if (!m) return one(0x78);
        this.#i += 2;
        return one(Number.parseInt(m[0], 16));
      }
      case "u": {
        const braces = /^\{([0-9a-fA-F]{1,6})\}/.exec(this.source.slice(this.#i));
        if (braces) {
          this.#i += braces[0].length;
          const cp = Number.parseInt(braces[1] as string, 16);
          if (cp > 0x10ffff) this.#fail("a code point past U+10FFFF");
          return one(cp);
        }
        const m = /^[0-9a-fA-F]{4}/.exec(this.source.slice(this.#i));
        if (!m) return one(0x75);
        this.#i += 4;
        let cp = Number.parseInt(m[0], 16);
        const low = /^\\u([dD][c-fC-F][0-9a-fA-F]{2})/.exec(this.source.slice(this.#i));
        if (cp >= 0xd800 && cp <= 0xdbff && low) {
          this.#i += 6;
          cp = 0x10000 + ((cp - 0xd800) << 10) + (Number.parseInt(low[1] as string, 16) - 0xdc00);
        }
        return one(cp);
      }
      case "0":
        if (/[0-9]/.test(this.#peek() ?? "")) this.#fail("octal escapes are not supported");
        return one(0);
      default:
        if (/[1-9]/.test(c)) {
          if (inClass) this.#fail("octal escapes are not supported");
          this.#fail("back-references are not supported");
        }
    }
    const cp = this.source.codePointAt(this.#i - 1) as number;
    if (cp > 0xffff) this.#i++;
    return one(cp);
  }

  /** After '[': the class's set. */
  #class(): CharSet {
    let negate = false;
    if (this.#peek() === "^") {
      negate = true;
      this.#i++;
    }
    let set: CharSet = [];
    let first = true;
    for (;;) {
      if (this.#i >= this.source.length) this.#fail("an unterminated character class");
      if (this.#peek() === "]" && !(first && false)) {
        this.#i++;
        break;
      }
      first = false;
      const lo = this.#classAtom();
      if (this.#peek() === "-" && this.source[this.#i + 1] !== "]" && this.#i + 1 < this.source.length) {
        this.#i++;
        const hi = this.#classAtom();
        if (lo.single === null || hi.single === null) {
          // [\d-x]: Annex B reads the '-' literally
          set = union(union(union(set, lo.set), hi.set), [0x2d, 0x2d]);
          continue;
        }
        if (hi.single < lo.single) this.#fail("a class range out of order");
        set = union(set, [lo.single, hi.single]);
      } else set = union(set, lo.set);
    }
    return negate ? complement(set) : set;
  }

  #classAtom(): { set: CharSet; single: number | null } {
    const c = this.source[this.#i++] as string;
    if (c === "\\") {
      const escaped = this.#escape(true).set;
      const single = escaped.length === 2 && escaped[0] === escaped[1] ? (escaped[0] as number) : null;
      return { set: escaped, single };
    }
    const cp = this.source.codePointAt(this.#i - 1) as number;
    if (cp > 0xffff) this.#i++;
    return { set: [cp, cp], single: cp };
  }
}

/** An NFA whose edges may also be the anchors (bol: at the start only, eol: at the end only). */
interface AnchoredNfa {
  nfa: CharNfa;
  bol: [number, number][];
  eol: [number, number][];
}

function build(node: Node, a: AnchoredNfa, from: number, to: number, budget: Budget): void {
  budget.check(1);
  switch (node.kind) {
    case "set":
      a.nfa.edge(from, node.set, to);
      return;
    case "bol":
      a.bol.push([from, to]);
      return;
    case "eol":
      a.eol.push([from, to]);
      return;
    case "alt":
      for (const o of node.options) build(o, a, from, to, budget);
      return;
    case "seq": {
      let at = from;
      node.items.forEach((item, i) => {
        const next = i === node.items.length - 1 ? to : a.nfa.add();
        build(item, a, at, next, budget);
        at = next;
      });
      if (node.items.length === 0) a.nfa.epsilon(from, to);
      return;
    }
    case "repeat": {
      let at = from;
      for (let i = 0; i < node.min; i++) {
        const next = a.nfa.add();
        build(node.node, a, at, next, budget);
        at = next;
      }
      if (node.max === null) {
        const loop = a.nfa.add();
        a.nfa.epsilon(at, loop);
        build(node.node, a, loop, loop, budget);
        a.nfa.epsilon(loop, to);
      } else {
        a.nfa.epsilon(at, to);
        for (let i = node.min; i < node.max; i++) {
          const next = a.nfa.add();
          build(node.node, a, at, next, budget);
          a.nfa.epsilon(next, to);
          at = next;
        }
      }
    }
  }
}

/**
 * Removes the anchors: a product with (at the start?, at the end?) over the NFA's states, with the
 * unanchored search's free prefix and suffix when `search`.
 */
function resolveAnchors(
  a: AnchoredNfa,
  start: number,
  accept: number,
  search: boolean,
): { nfa: CharNfa; start: number; accept: number } {
  const out = new CharNfa();
  const ids = new Map<string, number>();
  const work: [number, number, number][] = [];
  // phase: 0 = nothing read yet, 1 = read something, 2 = at the end (nothing more may be read)
  const id = (q: number, phase: number): number => {
    const key = `${q},${phase}`;
    let s = ids.get(key);
    if (s === undefined) {
      s = out.add();
      ids.set(key, s);
      work.push([q, phase, s]);
    }
    return s;
  };
  const outStart = out.add();
  const outAccept = out.add();
  const prefix = out.add(); // search: read something before the match
  out.epsilon(outStart, id(start, 0));
  if (search) {
    out.edge(outStart, ANY, prefix);
    out.edge(prefix, ANY, prefix);
    out.epsilon(prefix, id(start, 1));
  }
  const suffix = out.add();
  if (search) {
    out.edge(suffix, ANY, suffix);
    out.epsilon(suffix, outAccept);
  }
  const bolFrom = new Map<number, number[]>();
  const eolFrom = new Map<number, number[]>();
  for (const [f, t] of a.bol) bolFrom.set(f, [...(bolFrom.get(f) ?? []), t]);
  for (const [f, t] of a.eol) eolFrom.set(f, [...(eolFrom.get(f) ?? []), t]);
  while (work.length > 0) {
    const [q, phase, s] = work.pop() as [number, number, number];
    for (const t of a.nfa.eps[q] as number[]) out.epsilon(s, id(t, phase));
    if (phase === 0) for (const t of bolFrom.get(q) ?? []) out.epsilon(s, id(t, 0));
    for (const t of eolFrom.get(q) ?? []) out.epsilon(s, id(t, 2));
    if (phase !== 2)
      for (const e of a.nfa.edges[q] as { set: CharSet; to: number }[]) out.edge(s, e.set, id(e.to, 1));
    if (q === accept) {
      out.epsilon(s, outAccept);
      if (search && phase !== 2) out.epsilon(s, suffix);
    }
  }
  return { nfa: out, start: outStart, accept: outAccept };
}

function compile(pattern: string, search: boolean, budget: Budget): CharDfa {
  const ast = new Parser(pattern).parse();
  const a: AnchoredNfa = { nfa: new CharNfa(), bol: [], eol: [] };
  const start = a.nfa.add();
  const accept = a.nfa.add();
  build(ast, a, start, accept, budget);
  const plain = resolveAnchors(a, start, accept, search);
  return determinize(plain.nfa, plain.start, plain.accept, budget);
}

/** Strings in which the pattern matches somewhere (JSON Schema's `pattern`). Throws RegexError. */
export function searchDfa(pattern: string, budget: Budget): CharDfa {
  return compile(pattern, true, budget);
}

/** Strings the pattern matches as a whole (as if written ^(?:pattern)$). Throws RegexError. */
export function fullMatchDfa(pattern: string, budget: Budget): CharDfa {
  return compile(pattern, false, budget);
}
