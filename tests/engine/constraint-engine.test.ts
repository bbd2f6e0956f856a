/**
 * Constrained generation on the real CPU engine: only tokens the constraint allows, end ids only where it
 * is complete, "constraint" as the finish of a finite language, unconstrained neighbours in the batch
 * untouched, and a dead end answered with an error while the engine serves on.
 */
import { describe, expect, test } from "bun:test";
import { ConstraintGrammar, ConstraintMatcher } from "../../src/engine/constraint-native.ts";
import type { EngineError, GenerateRequest } from "../../src/engine/engine.ts";
import { collect, engineTestModel, tinySpec } from "../helpers/engine.ts";
import { buildProgram, choice, type StateSpec, vocabOf } from "./constraint-helpers.ts";

const { open } = engineTestModel("constraint", tinySpec(21));

/** The model's 64 ids as text: 0 is the end id (excluded), then letters, then pieces of several bytes. */
const END = 0;
const PIECES = ["he", "hel", "ll", "lo", "llo", "elp", "ro", "her", "o!", "p!", "!"];
const TOKENS = ["<end>", ..."abcdefghijklmnopqrstuvwxyz", ...PIECES];
while (TOKENS.length < 64) TOKENS.push(`${TOKENS.length}#`);
const vocab = vocabOf(TOKENS, [END]);

function matcher(words: string[]): ConstraintMatcher {
  return ConstraintMatcher.create(ConstraintGrammar.create(vocab, buildProgram([choice(words)])));
}

const text = (ids: number[]) => ids.map((i) => TOKENS[i]).join("");

/** Replays generated ids on a fresh matcher: every one must have been allowed where it came. */
function replay(words: string[], ids: number[]): ConstraintMatcher {
  const m = matcher(words);
  ids.forEach((id, i) => {
    if (id === END) {
      expect({ at: i, complete: m.complete }).toEqual({ at: i, complete: true });
      expect(i).toBe(ids.length - 1);
    } else {
      expect({ at: i, id, accepted: m.accept(id) }).toEqual({ at: i, id, accepted: true });
    }
  });
  return m;
}

const BASE: GenerateRequest = { prompt: [3, 9, 27, 40], maxNewTokens: 12, temperature: 1.5 };

describe("constrained generation on the CPU engine", () => {
  test("the engine says it supports constraints", () => {
    expect(open().capabilities.constraints).toBe(true);
  });

  test("a finite language: only allowed tokens, then finish 'constraint' (no end id needed)", async () => {
    const e = open({ maxBatch: 4 });
    const words = ["hello!", "help!", "hero!"];
    const constraint = matcher(words);
    for (let seed = 1; seed <= 12; seed++) {
      const out = await collect(e.enqueue({ ...BASE, seed, constraint }));
      expect(out.finishReason).toBe("constraint");
      expect(words).toContain(text(out.tokens));
      const m = replay(words, out.tokens);
      expect([m.complete, m.canContinue]).toEqual([true, false]);
      m.free();
    }
    // the engine copied the matcher: the caller's is where it was
    expect(constraint.complete).toBe(false);
    constraint.free();
  });

  test("end ids only where the text is complete; greedy and sampled; logprobs stay the raw model's", async () => {
    const e = open({ maxBatch: 4 });
    const words = ["he", "hel", "hell", "hello", "her"];
    const constraint = matcher(words);
    const finishes = new Set<string | null>();
    // the first token's logprob: the log-softmax of the unconstrained logits
    const logits = e.forwardLogits(BASE.prompt).at(-1) as Float32Array;
    const max = Math.max(...logits);
    const lse = max + Math.log(logits.reduce((sum, x) => sum + Math.exp(x - max), 0));
    for (let seed = 1; seed <= 16; seed++) {
      const request = {
        ...BASE,
        seed,
        temperature: seed === 1 ? 0 : 2,
        endIds: [END],
        topLogprobs: 2,
        constraint,
      };
      const out = await collect(e.enqueue(request));
      finishes.add(out.finishReason);
      expect(["end_id", "constraint"]).toContain(out.finishReason as string);
      replay(words, out.tokens).free();
      if (out.finishReason === "end_id") expect(words).toContain(text(out.tokens.slice(0, -1)));
      const first = out.events[0];
      expect(first?.logprob as number).toBeCloseTo((logits[first?.token as number] as number) - lse, 4);
    }
    expect([...finishes].sort()).toEqual(["constraint", "end_id"]);
    constraint.free();
  });

  test("in one batch, unconstrained requests get the same tokens as alone, and so do constrained ones", async () => {
    const e = open({ maxBatch: 6 });
    const words = ["hello!", "help!", "hero!", "lo", "ll"];
    const plain: GenerateRequest = { ...BASE, maxNewTokens: 10, seed: 99 };
    const constrained = (seed: number): GenerateRequest => ({ ...BASE, seed, constraint: matcher(words) });
    const aloneA = await collect(e.enqueue(plain));
    const aloneB = await collect(e.enqueue(constrained(5)));
    const batch = [plain, constrained(5), constrained(6), { ...plain, seed: 100 }, constrained(7)].map((r) =>
      e.enqueue(r),
    );
    const outs = await Promise.all(batch.map(collect));
    expect(outs[0]?.tokens).toEqual(aloneA.tokens);
    expect(outs[0]?.finishReason).toBe("length");
    expect(outs[1]?.tokens).toEqual(aloneB.tokens);
    for (const i of [1, 2, 4]) {
      expect(outs[i]?.finishReason).toBe("constraint");
      expect(words).toContain(text(outs[i]?.tokens ?? []));
    }
  });

  test("a constraint with no token allowed ends that request with an error; the engine serves on", async () => {
    const e = open();
    // the empty text only: complete at once, nothing may follow; without end ids nothing is allowed
    const empty = ConstraintMatcher.create(
      ConstraintGrammar.create(vocab, buildProgram([[{ accept: true }]])),
    );
    const failed = collect(e.enqueue({ ...BASE, constraint: empty }));
    await expect(failed).rejects.toThrow("the constraint allows no token here");
    const err = await failed.catch((x: EngineError) => x);
    expect((err as EngineError).engineCode).toBe("INTERNAL");
    // with an end id, that is the only token allowed
    const ended = await collect(e.enqueue({ ...BASE, endIds: [END], constraint: empty }));
    expect(ended).toMatchObject({ tokens: [END], finishReason: "end_id" });
    const after = await collect(e.enqueue({ ...BASE, seed: 3 }));
    expect(after.tokens.length).toBe(BASE.maxNewTokens);
    empty.free();
  });

  test("a constraint over a vocabulary larger than the model's is refused at enqueue", () => {
    const e = open();
    const big = vocabOf([...TOKENS, "extra"]);
    const m = ConstraintMatcher.create(ConstraintGrammar.create(big, buildProgram([choice(["a"])])));
    let error: EngineError | undefined;
    try {
      e.enqueue({ ...BASE, constraint: m });
    } catch (x) {
      error = x as EngineError;
    }
    expect(error?.engineCode).toBe("INVALID_ARGUMENT");
    expect(error?.message).toContain(
      "the constraint's vocabulary (65 tokens) is larger than the model's (64)",
    );
    m.free();
    big.release();
  });
});

describe("constraint masks computed while the forward pass runs", () => {
  test("the mask thread computes every constrained row's mask during the pass; tokens equal those of masks computed after it", async () => {
    const e = open({ maxBatch: 8 });
    // letters, then "!" ends the text: most sequences run to max_new_tokens
    const letters: StateSpec[] = [
      {
        bytes: [
          ["a", "z", 0],
          ["!", 1],
        ],
      },
      { accept: true },
    ];
    const constraint = ConstraintMatcher.create(ConstraintGrammar.create(vocab, buildProgram([letters])));
    const requests: GenerateRequest[] = [
      ...[1, 2, 3, 4, 5].map((seed) => ({ ...BASE, seed, endIds: [END], constraint })),
      { ...BASE, seed: 6, constraint, temperature: 0 },
      { ...BASE, seed: 7 },
      { ...BASE, seed: 8, maxNewTokens: 5 },
    ];
    const run = async (mode: "inline" | "thread" | "overlap") => {
      const before = e.testMaskOverlap(mode);
      const outs = await Promise.all(requests.map((r) => collect(e.enqueue(r))));
      const after = e.testMaskOverlap();
      const masks = outs.reduce((n, o, i) => n + (requests[i]?.constraint ? o.tokens.length : 0), 0);
      return {
        tokens: outs.map((o) => o.tokens),
        masks,
        precomputed: after.precomputed - before.precomputed,
        inline: after.inline - before.inline,
      };
    };
    const inline = await run("inline");
    expect(inline.masks).toBeGreaterThan(40);
    expect([inline.precomputed, inline.inline]).toEqual([0, inline.masks]);
    // every mask by the thread, first tokens after a prefill included
    const thread = await run("thread");
    expect(thread.tokens).toEqual(inline.tokens);
    expect([thread.precomputed, thread.inline]).toEqual([inline.masks, 0]);
    // the default: the thread's, and the scheduler's for what the thread had not started after the pass
    const overlap = await run("overlap");
    expect(overlap.tokens).toEqual(inline.tokens);
    expect(overlap.precomputed + overlap.inline).toBe(inline.masks);
    // and each request alone gets the tokens it gets in the batch
    for (const [i, r] of requests.entries())
      expect((await collect(e.enqueue(r))).tokens).toEqual(inline.tokens[i] as number[]);
    constraint.free();
  });

  test("a failed forward pass while the mask thread holds rows: the step's requests end, the engine serves on", async () => {
    const e = open({ maxBatch: 4 });
    const constraint = matcher(["hello!", "help!", "hero!"]);
    e.testMaskOverlap("thread");
    const running = [1, 2, 3].map((seed) => collect(e.enqueue({ ...BASE, seed, constraint })));
    e.failNextScratchAllocations(1);
    const settled = await Promise.allSettled(running);
    e.failNextScratchAllocations(0);
    for (const s of settled) {
      if (s.status === "rejected") expect((s.reason as EngineError).engineCode).toBe("OUT_OF_MEMORY");
      else expect(s.value.finishReason).toBe("constraint");
    }
    expect(settled.some((s) => s.status === "rejected")).toBe(true);
    const after = await collect(e.enqueue({ ...BASE, seed: 4, constraint }));
    expect(after.finishReason).toBe("constraint");
    e.testMaskOverlap("overlap");
    constraint.free();
  });
});
