/**
 * logit_bias on the real CPU engine: -100 bans a token, +100 forces it, only on its own sequence in a
 * batch, under a constraint only among the tokens it allows; logprobs stay the raw model's; bad ids and
 * values are refused at enqueue.
 */
import { describe, expect, test } from "bun:test";
import { ConstraintGrammar, ConstraintMatcher } from "../../src/engine/constraint-native.ts";
import type { CpuEngine } from "../../src/engine/cpu-engine.ts";
import type { EngineError, GenerateRequest } from "../../src/engine/engine.ts";
import { collect, engineTestModel, tinySpec } from "../helpers/engine.ts";
import { buildProgram, choice, vocabOf } from "./constraint-helpers.ts";

const { open } = engineTestModel("logit-bias", tinySpec(33));

const bias = (entries: Record<number, number>) => {
  const ids = Object.keys(entries).map(Number);
  return {
    ids: Int32Array.from(ids),
    values: Float32Array.from(ids.map((id) => entries[id] as number)),
  };
};

const BASE: GenerateRequest = { prompt: [5, 17, 33, 2], maxNewTokens: 100, temperature: 1 };
const SEEDS = Array.from({ length: 10 }, (_, i) => 1000 + i);

/** Every token of 10 seeds x 100 tokens (1,000 sampled tokens). */
async function sampleAll(e: CpuEngine, extra: Partial<GenerateRequest> = {}): Promise<number[]> {
  const outs = await Promise.all(SEEDS.map((seed) => collect(e.enqueue({ ...BASE, seed, ...extra }))));
  return outs.flatMap((o) => o.tokens);
}

function mostFrequent(tokens: number[]): number {
  const counts = new Map<number, number>();
  for (const t of tokens) counts.set(t, (counts.get(t) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0]?.[0] as number;
}

describe("logit_bias on the CPU engine", () => {
  test("the engine says it applies logit_bias", () => {
    expect(open().capabilities.logitBias).toBe(true);
  });

  test("-100 bans a token: never in 1,000 sampled tokens (temperature 1, 10 seeds), while it appears without", async () => {
    const e = open({ maxBatch: 10 });
    const free = await sampleAll(e);
    expect(free.length).toBe(1000);
    const banned = mostFrequent(free);
    const second = mostFrequent(free.filter((t) => t !== banned));
    expect(free.filter((t) => t === banned).length).toBeGreaterThan(10);
    const biased = await sampleAll(e, { logitBias: bias({ [banned]: -100, [second]: -100 }) });
    expect(biased.length).toBe(1000);
    expect(biased.filter((t) => t === banned || t === second)).toEqual([]);
    // at temperature 2 and with penalties too
    const hot = await sampleAll(e, {
      temperature: 2,
      frequencyPenalty: -2,
      topK: 5,
      logitBias: bias({ [banned]: -100 }),
    });
    expect(hot.filter((t) => t === banned)).toEqual([]);
  });

  test("+100 forces a token: it is every sampled token, whatever the temperature", async () => {
    const e = open({ maxBatch: 10 });
    const free = await sampleAll(e);
    const rare = [...Array(64).keys()].find((t) => !free.includes(t)) ?? 63;
    for (const temperature of [1, 2, 0]) {
      const forced = await sampleAll(e, { temperature, logitBias: bias({ [rare]: 100 }) });
      expect(forced.length).toBe(1000);
      expect(new Set(forced)).toEqual(new Set([rare]));
    }
  });

  test("a bias changes only its own sequence: the others in the batch get the tokens they get alone", async () => {
    const e = open({ maxBatch: 6 });
    const requests: GenerateRequest[] = [
      { ...BASE, maxNewTokens: 30, seed: 1 },
      { ...BASE, maxNewTokens: 30, seed: 2, logitBias: bias({ 7: 100 }) },
      { ...BASE, maxNewTokens: 30, seed: 3 },
      { ...BASE, maxNewTokens: 30, seed: 4, logitBias: bias({ 3: -100, 9: 5.5, 11: -3 }) },
      { ...BASE, maxNewTokens: 30, seed: 5, temperature: 0 },
    ];
    const alone = [];
    for (const r of requests) alone.push((await collect(e.enqueue(r))).tokens);
    const batched = await Promise.all(requests.map((r) => collect(e.enqueue(r))));
    expect(batched.map((o) => o.tokens)).toEqual(alone);
    expect(new Set(alone[1])).toEqual(new Set([7]));
    expect(alone[3]).not.toContain(3);
    // and the unbiased ones are the plain ones
    const plain = await collect(e.enqueue({ ...BASE, maxNewTokens: 30, seed: 4 }));
    expect(plain.tokens).not.toEqual(alone[3]);
  });

  test("logprobs stay the raw model's log-softmax, whatever the bias", async () => {
    const e = open();
    const logits = e.forwardLogits(BASE.prompt).at(-1) as Float32Array;
    const max = Math.max(...logits);
    const lse = max + Math.log(logits.reduce((sum, x) => sum + Math.exp(x - max), 0));
    const out = await collect(
      e.enqueue({ ...BASE, maxNewTokens: 1, seed: 9, topLogprobs: 3, logitBias: bias({ 40: 100 }) }),
    );
    const first = out.events[0];
    expect(first?.token).toBe(40);
    expect(first?.logprob as number).toBeCloseTo((logits[40] as number) - lse, 4);
    // the top alternatives are the raw model's most likely, not the biased token first
    const rawTop = [...logits.keys()].sort((a, b) => (logits[b] as number) - (logits[a] as number))[0];
    expect(first?.top?.[0]?.token).toBe(rawTop);
  });

  test("ids outside the vocabulary and values outside [-100, 100] are refused at enqueue", () => {
    const e = open();
    const refuse = (logitBias: { ids: Int32Array; values: Float32Array }) => {
      try {
        e.enqueue({ ...BASE, logitBias });
      } catch (x) {
        return { code: (x as EngineError).engineCode, message: (x as Error).message };
      }
      return null;
    };
    expect(refuse(bias({ 64: 1 }))).toEqual({
      code: "INVALID_ARGUMENT",
      message: expect.stringContaining("logit_bias token 64 is outside the vocabulary (0..63)"),
    });
    expect(refuse({ ids: Int32Array.of(-1), values: Float32Array.of(1) })?.code).toBe("INVALID_ARGUMENT");
    expect(refuse(bias({ 3: 100.5 }))?.message).toContain(
      "logit_bias value 100.5 of token 3 is not a number in [-100, 100]",
    );
    expect(refuse(bias({ 3: Number.NaN }))?.code).toBe("INVALID_ARGUMENT");
    expect(refuse(bias({ 3: Number.NEGATIVE_INFINITY }))?.code).toBe("INVALID_ARGUMENT");
  });

  test("a bias that bans every token of the vocabulary ends the request with an error; the engine serves on", async () => {
    const e = open();
    const all = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [i, -100]));
    const failed = collect(e.enqueue({ ...BASE, seed: 1, logitBias: bias(all) }));
    await expect(failed).rejects.toThrow("logit_bias bans every token of the vocabulary");
    // one token left: it is the only pick
    const one = await collect(
      e.enqueue({ ...BASE, seed: 1, maxNewTokens: 5, logitBias: bias({ ...all, 9: 0 }) }),
    );
    expect(one.tokens).toEqual([9, 9, 9, 9, 9]);
  });
});

/** The model's 64 ids as text (as in constraint-engine.test.ts): 0 the end id, then letters, then pieces. */
const END = 0;
const TOKENS = [
  "<end>",
  ..."abcdefghijklmnopqrstuvwxyz",
  "he",
  "hel",
  "ll",
  "lo",
  "llo",
  "elp",
  "ro",
  "her",
  "o!",
  "p!",
  "!",
];
while (TOKENS.length < 64) TOKENS.push(`${TOKENS.length}#`);
const vocab = vocabOf(TOKENS, [END]);
const id = (t: string) => TOKENS.indexOf(t);
const text = (ids: number[]) => ids.map((i) => TOKENS[i]).join("");

const matcher = (words: string[]) =>
  ConstraintMatcher.create(ConstraintGrammar.create(vocab, buildProgram([choice(words)])));

describe("logit_bias under an output constraint", () => {
  const words = ["hello!", "help!", "hero!"];

  test("a token the constraint disallows stays disallowed at +100; a ban steers among the allowed ones", async () => {
    const e = open({ maxBatch: 8 });
    const constraint = matcher(words);
    const outs = await Promise.all(
      SEEDS.map((seed) =>
        collect(
          e.enqueue({
            ...BASE,
            maxNewTokens: 12,
            seed,
            temperature: 1.5,
            constraint,
            // "z" is never allowed; banning "r" (and the pieces that spell "hero!") leaves hello! and help!
            logitBias: bias({ [id("z")]: 100, [id("r")]: -100, [id("ro")]: -100, [id("her")]: -100 }),
          }),
        ),
      ),
    );
    for (const out of outs) {
      expect(out.finishReason).toBe("constraint");
      expect(["hello!", "help!"]).toContain(text(out.tokens));
    }
    // +100 on allowed pieces: each taken where the constraint allows it ("elp" only after "h")
    const forced = await collect(
      e.enqueue({
        ...BASE,
        maxNewTokens: 12,
        seed: 4,
        constraint,
        logitBias: bias({ [id("elp")]: 100, [id("h")]: 100 }),
      }),
    );
    expect(forced.tokens).toEqual([id("h"), id("elp"), id("!")]);
    constraint.free();
  });

  test("a bias that bans every token the constraint allows ends the request with an error", async () => {
    const e = open();
    const constraint = matcher(["a"]);
    const failed = collect(e.enqueue({ ...BASE, constraint, logitBias: bias({ [id("a")]: -100 }) }));
    await expect(failed).rejects.toThrow("logit_bias bans every token the constraint allows here");
    expect(((await failed.catch((x) => x)) as EngineError).engineCode).toBe("INVALID_ARGUMENT");
    const after = await collect(e.enqueue({ ...BASE, maxNewTokens: 3, seed: 1, constraint }));
    expect(after.tokens).toEqual([id("a")]);
    constraint.free();
  });
});
