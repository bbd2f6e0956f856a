/**
 * The grammar as the C matcher runs it (ffi/include/multilora.h, "Output constraints"): rules, each a DFA
 * over bytes whose states may call other rules. Rules are written as NFAs (byte edges, calls, epsilons),
 * then each is made deterministic over bytes (the subset construction), trimmed of dead ends (a byte
 * allowed must lead somewhere the text can still be finished), and packed into the int32 program.
 */
import { MultiloraError } from "../errors.ts";
import type { Budget } from "./budget.ts";
import type { CharDfa, Transition } from "./char-automaton.ts";
import type { CharSet } from "./charset.ts";
import { ANY, intersect } from "./charset.ts";

export const PROGRAM_MAGIC = 0x47524c4d;
export const PROGRAM_VERSION = 1;

interface ByteEdge {
  lo: number;
  hi: number;
  to: number;
}
interface CallEdge {
  rule: number;
  to: number;
}

/** One rule's NFA, written by the compiler. */
export class RuleNfa {
  readonly eps: number[][] = [];
  readonly bytes: ByteEdge[][] = [];
  readonly calls: CallEdge[][] = [];
  readonly start: number;
  readonly accept: number;

  constructor(readonly budget: Budget) {
    this.start = this.add();
    this.accept = this.add();
  }

  add(): number {
    this.eps.push([]);
    this.bytes.push([]);
    this.calls.push([]);
    this.budget.check();
    return this.eps.length - 1;
  }

  epsilon(from: number, to: number): void {
    (this.eps[from] as number[]).push(to);
  }

  byte(from: number, lo: number, hi: number, to: number): void {
    (this.bytes[from] as ByteEdge[]).push({ lo, hi, to });
  }

  call(from: number, rule: number, to: number): void {
    (this.calls[from] as CallEdge[]).push({ rule, to });
  }

  /** The bytes of text (UTF-8) in sequence. */
  literal(from: number, to: number, text: string): void {
    const bytes = new TextEncoder().encode(text);
    if (bytes.length === 0) {
      this.epsilon(from, to);
      return;
    }
    let at = from;
    bytes.forEach((b, i) => {
      const next = i === bytes.length - 1 ? to : this.add();
      this.byte(at, b, b, next);
      at = next;
    });
  }

  /** A sequence of pieces, each written between two states. */
  sequence(from: number, to: number, pieces: readonly ((from: number, to: number) => void)[]): void {
    if (pieces.length === 0) {
      this.epsilon(from, to);
      return;
    }
    let at = from;
    pieces.forEach((piece, i) => {
      const next = i === pieces.length - 1 ? to : this.add();
      piece(at, next);
      at = next;
    });
  }

  /** Characters of a DFA as bytes: UTF-8 (`raw`), or as the content of a JSON string (`json`). */
  chars(from: number, to: number, dfa: CharDfa, mode: "raw" | "json"): void {
    const ids = dfa.accepting.map(() => this.add());
    this.epsilon(from, ids[0] as number);
    dfa.accepting.forEach((accepting, s) => {
      if (accepting) this.epsilon(ids[s] as number, to);
      for (const t of dfa.trans[s] as Transition[]) {
        if (mode === "raw") this.#utf8(ids[s] as number, ids[t.to] as number, [t.lo, t.hi]);
        else this.#jsonChars(ids[s] as number, ids[t.to] as number, [t.lo, t.hi]);
      }
    });
  }

  /**
   * Characters as JSON writes them inside a string: printable ones as themselves (UTF-8), `"` and `\` as
   * `\"` and `\\`, `/` also as `\/`, control characters as `\u00XX` (either case) or their short escape.
   * No other `\u` escapes: a character has no second spelling that could slip past an exclusion.
   */
  #jsonChars(from: number, to: number, set: CharSet): void {
    this.#utf8(from, to, intersect(set, [0x20, 0x21, 0x23, 0x5b, 0x5d, 0x10ffff]));
    const has = (cp: number) => intersect(set, [cp, cp]).length > 0;
    const controls = intersect(set, [0, 0x1f]);
    if (!has(0x22) && !has(0x5c) && !has(0x2f) && controls.length === 0) return;
    const backslash = this.add(); // after the backslash
    this.byte(from, 0x5c, 0x5c, backslash);
    for (const cp of [0x22, 0x5c, 0x2f]) if (has(cp)) this.byte(backslash, cp, cp, to);
    const short: Record<number, string> = { 8: "b", 9: "t", 10: "n", 12: "f", 13: "r" };
    for (const [c, letter] of Object.entries(short)) {
      if (has(Number(c))) this.byte(backslash, letter.charCodeAt(0), letter.charCodeAt(0), to);
    }
    if (controls.length === 0) return;
    const u00 = this.add();
    this.literal(backslash, u00, "u00");
    for (const hi of [0, 1]) {
      const digits: number[] = [];
      for (let lo = 0; lo < 16; lo++) if (has(hi * 16 + lo)) digits.push(lo);
      if (digits.length === 0) continue;
      const after = this.add();
      this.byte(u00, 0x30 + hi, 0x30 + hi, after);
      for (const lo of digits) {
        const c = lo.toString(16).charCodeAt(0);
        this.byte(after, c, c, to);
        if (lo >= 10) this.byte(after, c - 32, c - 32, to); // A-F
      }
    }
  }

  /** States from which `count` UTF-8 continuation bytes (80..BF) lead to `to`, shared by every sequence. */
  readonly #tails = new Map<number, number[]>();

  #tail(to: number, count: number): number {
    let tails = this.#tails.get(to);
    if (!tails) {
      tails = [to];
      this.#tails.set(to, tails);
    }
    while (tails.length <= count) {
      const s = this.add();
      this.byte(s, 0x80, 0xbf, tails[tails.length - 1] as number);
      tails.push(s);
    }
    return tails[count] as number;
  }

  /** Code points as UTF-8 byte sequences. */
  #utf8(from: number, to: number, chars: CharSet): void {
    const set = intersect(chars, ANY);
    for (let i = 0; i < set.length; i += 2) {
      for (const seq of utf8Sequences(set[i] as number, set[i + 1] as number)) {
        // Trailing full continuation ranges go through the shared tails.
        let full = 0;
        while (
          full < seq.length - 1 &&
          seq[seq.length - 1 - full]?.[0] === 0x80 &&
          seq[seq.length - 1 - full]?.[1] === 0xbf
        )
          full++;
        const head = seq.slice(0, seq.length - full);
        const end = this.#tail(to, full);
        let at = from;
        head.forEach(([lo, hi], k) => {
          const next = k === head.length - 1 ? end : this.add();
          this.byte(at, lo, hi, next);
          at = next;
        });
      }
    }
  }
}

function utf8Length(cp: number): number {
  return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
}

function utf8Bytes(cp: number): number[] {
  if (cp < 0x80) return [cp];
  if (cp < 0x800) return [0xc0 | (cp >> 6), 0x80 | (cp & 63)];
  if (cp < 0x10000) return [0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63)];
  return [0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 63), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63)];
}

/** The code points lo..hi as sequences of byte ranges, each sequence one range per byte. */
export function utf8Sequences(lo: number, hi: number): [number, number][][] {
  const out: [number, number][][] = [];
  const split = (a: number, b: number): void => {
    if (a > b) return;
    const limits = [0x7f, 0x7ff, 0xffff];
    for (const limit of limits) {
      if (a <= limit && b > limit) {
        split(a, limit);
        split(limit + 1, b);
        return;
      }
    }
    const n = utf8Length(a);
    for (let i = 1; i < n; i++) {
      const m = (1 << (6 * i)) - 1;
      if ((a & ~m) !== (b & ~m)) {
        if ((a & m) !== 0) {
          split(a, a | m);
          split((a | m) + 1, b);
          return;
        }
        if ((b & m) !== m) {
          split(a, (b & ~m) - 1);
          split(b & ~m, b);
          return;
        }
      }
    }
    const ea = utf8Bytes(a);
    const eb = utf8Bytes(b);
    out.push(ea.map((x, i) => [x, eb[i] as number]));
  };
  split(lo, hi);
  return out;
}

interface DfaState {
  accepting: boolean;
  bytes: ByteEdge[];
  calls: CallEdge[];
}

/** A program under construction: rules are declared (an id to call), then defined. */
export class GrammarBuilder {
  readonly #rules: (RuleNfa | null)[] = [];
  readonly #names: string[] = [];

  constructor(readonly budget: Budget) {}

  declare(name: string): number {
    this.#rules.push(null);
    this.#names.push(name);
    return this.#rules.length - 1;
  }

  define(rule: number, write: (nfa: RuleNfa) => void): void {
    const nfa = new RuleNfa(this.budget);
    write(nfa);
    this.#rules[rule] = nfa;
  }

  /** The packed program with `root` as its root rule; throws when the root's language is empty. */
  program(root: number): Int32Array {
    const dfas = this.#rules.map((nfa, i) => {
      if (!nfa) throw new Error(`rule ${this.#names[i]} declared but never defined`);
      return determinizeRule(nfa, this.budget);
    });
    const productive = productiveRules(dfas);
    if (!productive[root]) {
      throw new MultiloraError("the schema allows no value at all (its constraints contradict each other)", {
        code: "invalid_schema",
      });
    }
    const trimmed = dfas.map((dfa) => trimRule(dfa, productive));
    // Only rules reachable from the root, renumbered.
    const order = [root];
    const ruleId = new Map<number, number>([[root, 0]]);
    for (let i = 0; i < order.length; i++) {
      for (const s of trimmed[order[i] as number] as DfaState[]) {
        for (const c of s.calls) {
          if (!ruleId.has(c.rule)) {
            ruleId.set(c.rule, order.length);
            order.push(c.rule);
          }
        }
      }
    }
    const firstState: number[] = [];
    let nStates = 0;
    let nBytes = 0;
    let nCalls = 0;
    for (const r of order) {
      firstState.push(nStates);
      for (const s of trimmed[r] as DfaState[]) {
        nBytes += s.bytes.length;
        nCalls += s.calls.length;
      }
      nStates += (trimmed[r] as DfaState[]).length;
    }
    const out = new Int32Array(7 + order.length + nStates * 6 + nBytes * 3 + nCalls * 2);
    out.set([PROGRAM_MAGIC, PROGRAM_VERSION, order.length, nStates, nBytes, nCalls, 0]);
    let rp = 7;
    let sp = rp + order.length;
    let bp = sp + nStates * 6;
    let cp = bp + nBytes * 3;
    let byteIndex = 0;
    let callIndex = 0;
    order.forEach((r, k) => {
      const base = firstState[k] as number;
      out[rp++] = base;
      for (const s of trimmed[r] as DfaState[]) {
        out.set([k, s.accepting ? 1 : 0, byteIndex, s.bytes.length, callIndex, s.calls.length], sp);
        sp += 6;
        for (const e of s.bytes) {
          out.set([e.lo, e.hi, base + e.to], bp);
          bp += 3;
        }
        for (const c of s.calls) {
          out.set([ruleId.get(c.rule) as number, base + c.to], cp);
          cp += 2;
        }
        byteIndex += s.bytes.length;
        callIndex += s.calls.length;
      }
    });
    return out;
  }
}

/** The epsilon closure of a set of NFA states, sorted; `single` memoizes each state's own closure. */
function closure(nfa: RuleNfa, states: readonly number[], single: (number[] | undefined)[]): number[] {
  const own = (s: number): number[] => {
    let c = single[s];
    if (c) return c;
    if ((nfa.eps[s] as number[]).length === 0) c = [s];
    else {
      const seen = new Set<number>();
      const stack = [s];
      while (stack.length > 0) {
        const x = stack.pop() as number;
        if (seen.has(x)) continue;
        seen.add(x);
        for (const t of nfa.eps[x] as number[]) stack.push(t);
      }
      c = [...seen].sort((a, b) => a - b);
    }
    single[s] = c;
    return c;
  };
  if (states.length === 1) return own(states[0] as number);
  const all = new Set<number>();
  for (const s of states) for (const x of own(s)) all.add(x);
  return [...all].sort((a, b) => a - b);
}

function determinizeRule(nfa: RuleNfa, budget: Budget): DfaState[] {
  const single: (number[] | undefined)[] = [];
  const index = new Map<string, number>();
  const sets: number[][] = [];
  const out: DfaState[] = [];
  const intern = (set: number[]): number => {
    const key = set.join(",");
    let id = index.get(key);
    if (id === undefined) {
      id = sets.length;
      index.set(key, id);
      sets.push(set);
      out.push({ accepting: set.includes(nfa.accept), bytes: [], calls: [] });
      budget.check(1);
    }
    return id;
  };
  intern(closure(nfa, [nfa.start], single));
  for (let d = 0; d < sets.length; d++) {
    const members = sets[d] as number[];
    const edges: ByteEdge[] = [];
    const calls = new Map<number, number[]>();
    for (const s of members) {
      for (const e of nfa.bytes[s] as ByteEdge[]) edges.push(e);
      for (const c of nfa.calls[s] as CallEdge[]) calls.set(c.rule, [...(calls.get(c.rule) ?? []), c.to]);
    }
    const state = out[d] as DfaState;
    if (edges.length === 1) {
      const e = edges[0] as ByteEdge;
      state.bytes.push({ lo: e.lo, hi: e.hi, to: intern(closure(nfa, [e.to], single)) });
    } else if (edges.length > 1) {
      // Sweep the byte values: at each boundary, the edges covering the interval that starts there.
      const cuts = new Set<number>();
      for (const e of edges) {
        cuts.add(e.lo);
        cuts.add(e.hi + 1);
      }
      const points = [...cuts].sort((a, b) => a - b);
      edges.sort((a, b) => a.lo - b.lo);
      let active: ByteEdge[] = [];
      let next = 0;
      for (let p = 0; p + 1 < points.length; p++) {
        const lo = points[p] as number;
        const hi = (points[p + 1] as number) - 1;
        active = active.filter((e) => e.hi >= lo);
        while (next < edges.length && (edges[next] as ByteEdge).lo <= lo)
          active.push(edges[next++] as ByteEdge);
        if (active.length === 0) continue;
        const to = intern(
          closure(
            nfa,
            active.map((e) => e.to),
            single,
          ),
        );
        const last = state.bytes[state.bytes.length - 1];
        if (last && last.to === to && last.hi + 1 === lo) last.hi = hi;
        else state.bytes.push({ lo, hi, to });
      }
    }
    for (const [rule, targets] of [...calls].sort((a, b) => a[0] - b[0])) {
      state.calls.push({ rule, to: intern(closure(nfa, targets, single)) });
    }
    budget.check();
  }
  return out;
}

/** Rules that can derive at least one finite text (a fixed point). */
function productiveRules(dfas: DfaState[][]): boolean[] {
  const productive = dfas.map(() => false);
  for (let changed = true; changed; ) {
    changed = false;
    dfas.forEach((dfa, r) => {
      if (productive[r]) return;
      if (liveStates(dfa, productive)[0]) {
        productive[r] = true;
        changed = true;
      }
    });
  }
  return productive;
}

/** States from which the rule can end, through byte edges and calls of productive rules. */
function liveStates(dfa: DfaState[], productive: boolean[]): Uint8Array {
  const live = new Uint8Array(dfa.length);
  for (let changed = true; changed; ) {
    changed = false;
    dfa.forEach((s, i) => {
      if (live[i]) return;
      if (
        s.accepting ||
        s.bytes.some((e) => live[e.to]) ||
        s.calls.some((c) => productive[c.rule] && live[c.to])
      ) {
        live[i] = 1;
        changed = true;
      }
    });
  }
  return live;
}

/** Without edges into dead ends, renumbered from the start (which is live: the rule is productive). */
function trimRule(dfa: DfaState[], productive: boolean[]): DfaState[] {
  const live = liveStates(dfa, productive);
  if (!live[0]) return [{ accepting: false, bytes: [], calls: [] }];
  const id = new Map<number, number>([[0, 0]]);
  const order = [0];
  const keep = (s: DfaState) => ({
    bytes: s.bytes.filter((e) => live[e.to]),
    calls: s.calls.filter((c) => productive[c.rule] && live[c.to]),
  });
  for (let i = 0; i < order.length; i++) {
    const k = keep(dfa[order[i] as number] as DfaState);
    for (const t of [...k.bytes.map((e) => e.to), ...k.calls.map((c) => c.to)]) {
      if (!id.has(t)) {
        id.set(t, order.length);
        order.push(t);
      }
    }
  }
  return order.map((s) => {
    const k = keep(dfa[s] as DfaState);
    return {
      accepting: (dfa[s] as DfaState).accepting,
      bytes: k.bytes.map((e) => ({ ...e, to: id.get(e.to) as number })),
      calls: k.calls.map((c) => ({ ...c, to: id.get(c.to) as number })),
    };
  });
}
