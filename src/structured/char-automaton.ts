/**
 * Automata over Unicode code points: nondeterministic ones built from pieces (Thompson's construction),
 * deterministic ones by the subset construction, products (intersection), trimming and minimising. They
 * describe the characters of a JSON string (pattern, length, format, enum) and the text of a number; the
 * grammar embeds them as bytes (src/structured/byte-grammar.ts).
 */
import type { Budget } from "./budget.ts";
import { type CharSet, intersect } from "./charset.ts";

export class CharNfa {
  readonly eps: number[][] = [];
  readonly edges: { set: CharSet; to: number }[][] = [];

  add(): number {
    this.eps.push([]);
    this.edges.push([]);
    return this.eps.length - 1;
  }

  epsilon(from: number, to: number): void {
    (this.eps[from] as number[]).push(to);
  }

  edge(from: number, set: CharSet, to: number): void {
    if (set.length > 0) (this.edges[from] as { set: CharSet; to: number }[]).push({ set, to });
  }
}

export interface Transition {
  lo: number;
  hi: number;
  to: number;
}

/** Deterministic: each state's transitions are sorted by lo and disjoint. State 0 is the start. */
export interface CharDfa {
  accepting: boolean[];
  trans: Transition[][];
}

function closure(nfa: CharNfa, states: Iterable<number>): number[] {
  const seen = new Set<number>();
  const stack = [...states];
  while (stack.length > 0) {
    const s = stack.pop() as number;
    if (seen.has(s)) continue;
    seen.add(s);
    for (const t of nfa.eps[s] as number[]) stack.push(t);
  }
  return [...seen].sort((a, b) => a - b);
}

/** The subset construction; `accept` is the NFA's accepting state. */
export function determinize(nfa: CharNfa, start: number, accept: number, budget: Budget): CharDfa {
  const dfa: CharDfa = { accepting: [], trans: [] };
  const index = new Map<string, number>();
  const sets: number[][] = [];
  const intern = (set: number[]): number => {
    const key = set.join(",");
    let id = index.get(key);
    if (id === undefined) {
      id = sets.length;
      index.set(key, id);
      sets.push(set);
      dfa.accepting.push(set.includes(accept));
      dfa.trans.push([]);
      budget.check(1);
    }
    return id;
  };
  intern(closure(nfa, [start]));
  for (let d = 0; d < sets.length; d++) {
    const members = sets[d] as number[];
    const outgoing: { set: CharSet; to: number }[] = [];
    for (const s of members) for (const e of nfa.edges[s] as { set: CharSet; to: number }[]) outgoing.push(e);
    if (outgoing.length === 0) continue;
    // Elementary intervals: boundaries of every outgoing set.
    const cuts = new Set<number>();
    for (const e of outgoing) {
      for (let i = 0; i < e.set.length; i += 2) {
        cuts.add(e.set[i] as number);
        cuts.add((e.set[i + 1] as number) + 1);
      }
    }
    const points = [...cuts].sort((a, b) => a - b);
    const row: Transition[] = [];
    for (let p = 0; p + 1 < points.length; p++) {
      const lo = points[p] as number;
      const hi = (points[p + 1] as number) - 1;
      const targets: number[] = [];
      for (const e of outgoing) if (intersect(e.set, [lo, lo]).length > 0) targets.push(e.to);
      if (targets.length === 0) continue;
      const to = intern(closure(nfa, targets));
      const last = row[row.length - 1];
      if (last && last.to === to && last.hi + 1 === lo) last.hi = hi;
      else row.push({ lo, hi, to });
    }
    dfa.trans[d] = row;
    budget.check();
  }
  return dfa;
}

/** The product: strings both accept. */
export function intersectDfa(a: CharDfa, b: CharDfa, budget: Budget): CharDfa {
  const out: CharDfa = { accepting: [], trans: [] };
  const index = new Map<number, number>();
  const pairs: [number, number][] = [];
  const width = b.accepting.length;
  const intern = (x: number, y: number): number => {
    const key = x * width + y;
    let id = index.get(key);
    if (id === undefined) {
      id = pairs.length;
      index.set(key, id);
      pairs.push([x, y]);
      out.accepting.push((a.accepting[x] as boolean) && (b.accepting[y] as boolean));
      out.trans.push([]);
      budget.check(1);
    }
    return id;
  };
  intern(0, 0);
  for (let d = 0; d < pairs.length; d++) {
    const [x, y] = pairs[d] as [number, number];
    const row: Transition[] = [];
    for (const s of a.trans[x] as Transition[]) {
      for (const t of b.trans[y] as Transition[]) {
        const lo = Math.max(s.lo, t.lo);
        const hi = Math.min(s.hi, t.hi);
        if (lo <= hi) row.push({ lo, hi, to: intern(s.to, t.to) });
      }
    }
    row.sort((p, q) => p.lo - q.lo);
    out.trans[d] = row;
    budget.check();
  }
  return out;
}

/** Drops states from which no accepting state is reachable (the start stays). Null: the language is empty. */
export function trim(dfa: CharDfa): CharDfa | null {
  const n = dfa.accepting.length;
  const reverse: number[][] = Array.from({ length: n }, () => []);
  for (let s = 0; s < n; s++)
    for (const t of dfa.trans[s] as Transition[]) (reverse[t.to] as number[]).push(s);
  const live = new Uint8Array(n);
  const stack: number[] = [];
  for (let s = 0; s < n; s++) {
    if (dfa.accepting[s]) {
      live[s] = 1;
      stack.push(s);
    }
  }
  while (stack.length > 0) {
    for (const p of reverse[stack.pop() as number] as number[]) {
      if (!live[p]) {
        live[p] = 1;
        stack.push(p);
      }
    }
  }
  if (!live[0]) return null;
  // Renumber the live states reachable from the start, in breadth-first order.
  const id = new Map<number, number>([[0, 0]]);
  const order = [0];
  for (let i = 0; i < order.length; i++) {
    for (const t of dfa.trans[order[i] as number] as Transition[]) {
      if (live[t.to] && !id.has(t.to)) {
        id.set(t.to, order.length);
        order.push(t.to);
      }
    }
  }
  return {
    accepting: order.map((s) => dfa.accepting[s] as boolean),
    trans: order.map((s) =>
      (dfa.trans[s] as Transition[])
        .filter((t) => live[t.to])
        .map((t) => ({ ...t, to: id.get(t.to) as number })),
    ),
  };
}

/** The minimal equivalent DFA (Moore's partition refinement), trimmed. */
export function minimize(input: CharDfa): CharDfa | null {
  const dfa = trim(input);
  if (!dfa) return null;
  const n = dfa.accepting.length;
  let cls: number[] = dfa.accepting.map((a) => (a ? 1 : 0));
  let count = new Set(cls).size;
  for (;;) {
    const keys = new Map<string, number>();
    const next: number[] = [];
    for (let s = 0; s < n; s++) {
      const parts: string[] = [String(cls[s])];
      let prev: { lo: number; hi: number; c: number } | null = null;
      for (const t of dfa.trans[s] as Transition[]) {
        const c = cls[t.to] as number;
        if (prev && prev.c === c && prev.hi + 1 === t.lo) prev.hi = t.hi;
        else {
          if (prev) parts.push(`${prev.lo}-${prev.hi}:${prev.c}`);
          prev = { lo: t.lo, hi: t.hi, c };
        }
      }
      if (prev) parts.push(`${prev.lo}-${prev.hi}:${prev.c}`);
      const key = parts.join(" ");
      let k = keys.get(key);
      if (k === undefined) {
        k = keys.size;
        keys.set(key, k);
      }
      next.push(k);
    }
    cls = next;
    if (keys.size === count) break;
    count = keys.size;
  }
  // One state per class, the start's class first.
  const order: number[] = [];
  const rep = new Map<number, number>();
  const queue = [0];
  rep.set(cls[0] as number, 0);
  order.push(0);
  for (let i = 0; i < queue.length; i++) {
    const s = queue[i] as number;
    for (const t of dfa.trans[s] as Transition[]) {
      const c = cls[t.to] as number;
      if (!rep.has(c)) {
        rep.set(c, order.length);
        order.push(t.to);
        queue.push(t.to);
      }
    }
  }
  return {
    accepting: order.map((s) => dfa.accepting[s] as boolean),
    trans: order.map((s) => {
      const row: Transition[] = [];
      for (const t of dfa.trans[s] as Transition[]) {
        const to = rep.get(cls[t.to] as number) as number;
        const last = row[row.length - 1];
        if (last && last.to === to && last.hi + 1 === t.lo) last.hi = t.hi;
        else row.push({ lo: t.lo, hi: t.hi, to });
      }
      return row;
    }),
  };
}

/**
 * A DFA explored from a step function over a finite alphabet of code points: states are values, told
 * apart by `keyOf`; `step` returns null where the character is not allowed.
 */
export function dfaFromMachine<S>(
  start: S,
  alphabet: readonly number[],
  step: (state: S, cp: number) => S | null,
  accepting: (state: S) => boolean,
  keyOf: (state: S) => string,
  budget: Budget,
): CharDfa {
  const dfa: CharDfa = { accepting: [], trans: [] };
  const index = new Map<string, number>();
  const states: S[] = [];
  const intern = (s: S): number => {
    const key = keyOf(s);
    let id = index.get(key);
    if (id === undefined) {
      id = states.length;
      index.set(key, id);
      states.push(s);
      dfa.accepting.push(accepting(s));
      dfa.trans.push([]);
      budget.check(1);
    }
    return id;
  };
  intern(start);
  const sorted = [...alphabet].sort((a, b) => a - b);
  for (let d = 0; d < states.length; d++) {
    const row: Transition[] = [];
    for (const cp of sorted) {
      const next = step(states[d] as S, cp);
      if (next === null) continue;
      const to = intern(next);
      const last = row[row.length - 1];
      if (last && last.to === to && last.hi + 1 === cp) last.hi = cp;
      else row.push({ lo: cp, hi: cp, to });
    }
    dfa.trans[d] = row;
  }
  return dfa;
}

/** The DFA of exactly one string. */
export function literalDfa(text: string): CharDfa {
  const cps = [...text].map((c) => c.codePointAt(0) as number);
  return {
    accepting: cps.map(() => false).concat([true]),
    trans: cps.map((cp, i) => [{ lo: cp, hi: cp, to: i + 1 }]).concat([[]]),
  };
}

/** Any string of characters from set, of length min..max (max null = unbounded). */
export function repeatDfa(set: CharSet, min: number, max: number | null): CharDfa {
  const states = max === null ? min + 1 : max + 1;
  const dfa: CharDfa = { accepting: [], trans: [] };
  for (let i = 0; i < states; i++) {
    dfa.accepting.push(i >= min);
    const to = max === null && i === min ? i : i + 1;
    const row: Transition[] = [];
    if (to < states)
      for (let k = 0; k < set.length; k += 2)
        row.push({ lo: set[k] as number, hi: set[k + 1] as number, to });
    dfa.trans.push(row);
  }
  return dfa;
}

/** Strings of a DFA, or of b, as one DFA. */
export function unionDfa(dfas: readonly CharDfa[], budget: Budget): CharDfa {
  const nfa = new CharNfa();
  const start = nfa.add();
  const accept = nfa.add();
  for (const d of dfas) embedInNfa(nfa, d, start, accept);
  return determinize(nfa, start, accept, budget);
}

/** Copies a DFA into an NFA between two states. */
export function embedInNfa(nfa: CharNfa, dfa: CharDfa, from: number, to: number): void {
  const ids = dfa.accepting.map(() => nfa.add());
  nfa.epsilon(from, ids[0] as number);
  dfa.accepting.forEach((acc, s) => {
    if (acc) nfa.epsilon(ids[s] as number, to);
    for (const t of dfa.trans[s] as Transition[])
      nfa.edge(ids[s] as number, [t.lo, t.hi], ids[t.to] as number);
  });
}

/** Whether a DFA accepts a text (code point by code point). */
export function dfaAccepts(dfa: CharDfa, text: string): boolean {
  let s = 0;
  for (const ch of text) {
    const cp = ch.codePointAt(0) as number;
    const t = (dfa.trans[s] ?? []).find((x) => x.lo <= cp && cp <= x.hi);
    if (!t) return false;
    s = t.to;
  }
  return dfa.accepting[s] === true;
}
