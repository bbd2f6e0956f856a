/**
 * A plain TypeScript reading of a constraint program (ffi/include/multilora.h, "Output constraints"): the
 * set of call stacks alive after some bytes. Slow and simple, the reference the compiler's tests use
 * where the C matcher is not the subject.
 */
interface State {
  rule: number;
  accepting: boolean;
  bytes: [number, number, number][];
  calls: [number, number][];
}

export class ProgramMatcher {
  readonly states: State[] = [];
  readonly ruleStart: number[] = [];
  stacks: number[][];

  constructor(program: Int32Array) {
    const [, , nRules, nStates, nBytes] = program as unknown as number[];
    let p = 7;
    for (let r = 0; r < (nRules as number); r++) this.ruleStart.push(program[p++] as number);
    const sp = p;
    const bp = sp + (nStates as number) * 6;
    const cp = bp + (nBytes as number) * 3;
    for (let s = 0; s < (nStates as number); s++) {
      const o = sp + s * 6;
      const [rule, flags, b0, bn, c0, cn] = program.subarray(o, o + 6) as unknown as number[];
      const bytes: [number, number, number][] = [];
      for (let k = 0; k < (bn as number); k++) {
        const e = bp + ((b0 as number) + k) * 3;
        bytes.push([program[e] as number, program[e + 1] as number, program[e + 2] as number]);
      }
      const calls: [number, number][] = [];
      for (let k = 0; k < (cn as number); k++) {
        const e = cp + ((c0 as number) + k) * 2;
        calls.push([program[e] as number, program[e + 1] as number]);
      }
      this.states.push({ rule: rule as number, accepting: ((flags as number) & 1) === 1, bytes, calls });
    }
    this.stacks = [[this.ruleStart[program[6] as number] as number]];
  }

  /** Every stack reachable without reading (calls pushed, finished rules popped). */
  #closure(stacks: number[][]): number[][] {
    const seen = new Set<string>();
    const out: number[][] = [];
    const work = [...stacks];
    while (work.length > 0) {
      const stack = work.pop() as number[];
      const key = stack.join(",");
      if (seen.has(key) || stack.length > 256) continue;
      seen.add(key);
      out.push(stack);
      const top = this.states[stack[stack.length - 1] as number] as State;
      for (const [rule, ret] of top.calls)
        work.push([...stack.slice(0, -1), ret, this.ruleStart[rule] as number]);
      if (top.accepting && stack.length > 1) work.push(stack.slice(0, -1));
    }
    return out;
  }

  get complete(): boolean {
    return this.#closure(this.stacks).some(
      (s) => s.length === 1 && (this.states[s[0] as number] as State).accepting,
    );
  }

  /** Reads one byte; false (and unchanged) when no reading allows it. */
  byte(b: number): boolean {
    const next: number[][] = [];
    const seen = new Set<string>();
    for (const stack of this.#closure(this.stacks)) {
      const top = this.states[stack[stack.length - 1] as number] as State;
      for (const [lo, hi, to] of top.bytes) {
        if (b < lo || b > hi) continue;
        const s = [...stack.slice(0, -1), to];
        const key = s.join(",");
        if (!seen.has(key)) {
          seen.add(key);
          next.push(s);
        }
      }
    }
    if (next.length === 0) return false;
    this.stacks = next;
    return true;
  }

  /** Reads a text's UTF-8 bytes; the index of the first refused byte, or -1. */
  text(text: string): number {
    const bytes = new TextEncoder().encode(text);
    for (let i = 0; i < bytes.length; i++) if (!this.byte(bytes[i] as number)) return i;
    return -1;
  }
}
