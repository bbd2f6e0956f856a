/** The CPU engine against the float64 reference forward pass, with and without LoRA, alone and batched. */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cpuKernelPath } from "../../bench/native-yardstick.ts";
import type { CpuEngine } from "../../src/engine/cpu-engine.ts";
import {
  type LlamaSpec,
  rng,
  saveLlamaCheckpoint,
  writeLlamaCheckpoint,
} from "../../src/engine/random-checkpoint.ts";
import { writeSafetensors } from "../../src/formats/safetensors-writer.ts";
import {
  collect,
  loraFromFile,
  loraFromPeft,
  openEngine,
  peftDeltas,
  relativeError,
} from "../helpers/engine.ts";
import { FIXTURES, HAVE_FIXTURES } from "../helpers/fixtures.ts";
import { llama2cToHf } from "../helpers/llama2c.ts";
import { ALL_SEVEN, writePeftAdapter } from "../helpers/peft.ts";
import { greedy, type LoraDelta, mergeLora, referenceLogits } from "../helpers/reference-llama.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-engine-"));
const engines: CpuEngine[] = [];
afterAll(async () => {
  for (const e of engines) await e.close();
  rmSync(work, { recursive: true, force: true });
});
let n = 0;
const fresh = (name: string) => join(work, `${name}-${++n}`);
const track = (e: CpuEngine) => {
  engines.push(e);
  return e;
};

const BASE: LlamaSpec = {
  hidden: 64,
  intermediate: 96,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  headDim: 16,
  vocab: 128,
  seed: 11,
};
const PROMPT = [1, 17, 42, 99, 5, 63, 2, 77, 120, 3, 8, 64, 31];

describe("logits equal the reference forward pass", () => {
  const cases: [string, LlamaSpec, number][] = [
    ["GQA, F32", BASE, 1e-4],
    ["tied embeddings", { ...BASE, tied: true }, 1e-4],
    ["q/k/v bias (Qwen2)", { ...BASE, qkvBias: true }, 1e-4],
    [
      "llama3 rope scaling",
      {
        ...BASE,
        ropeTheta: 500000,
        ropeScaling: {
          factor: 8,
          low_freq_factor: 1,
          high_freq_factor: 4,
          original_max_position_embeddings: 8,
        },
      },
      1e-4,
    ],
    ["head_dim apart from hidden / heads", { ...BASE, headDim: 8 }, 1e-4],
    // 16-bit weights: the reference uses the very values stored, so only f32 arithmetic differs; except on
    // the avx512_bf16 path, whose vdpbf16ps products round the activations to bf16 (tests/engine/kernels.test.ts).
    ["BF16 weights", { ...BASE, dtype: "BF16" }, cpuKernelPath() === "avx512_bf16" ? 1e-2 : 1e-4],
    ["F16 weights", { ...BASE, dtype: "F16" }, 1e-4],
  ];
  for (const [what, spec, tolerance] of cases) {
    test(`${what}: largest difference under ${tolerance} of the largest logit`, () => {
      const model = writeLlamaCheckpoint(fresh("model"), spec);
      // A small prefill chunk makes the prompt run in several chunks.
      const engine = track(openEngine(model.dir, { maxBatch: 2, prefillChunk: 3 }));
      const error = relativeError(engine.forwardLogits(PROMPT), referenceLogits(model, PROMPT));
      if (error > tolerance / 10) console.log(`${what}: relative error ${error}`);
      expect(error).toBeLessThan(tolerance);
    });
  }

  test.skipIf(!HAVE_FIXTURES)(
    "the real aidreams260K model, converted from llama2.c, reproduces its golden greedy ids",
    async () => {
      const model = llama2cToHf(fresh("aidreams"), join(FIXTURES, "aidreams260K-llama2c/aidreams260K.bin"));
      const engine = track(openEngine(model.dir));
      const out = await collect(engine.enqueue({ prompt: [1], maxNewTokens: 16, temperature: 0 }));
      expect(out.tokens).toEqual([
        319, 459, 355, 260, 275, 429, 339, 315, 374, 327, 446, 262, 421, 392, 275, 280,
      ]);
      expect(out.finishReason).toBe("length");
    },
  );
});

describe("LoRA", () => {
  test("the engine with an adapter equals the engine on the base model with W + scale BA merged in", async () => {
    const model = writeLlamaCheckpoint(fresh("model"), BASE);
    const dims = { hidden: 64, intermediate: 96, layers: 2, heads: 4, kvHeads: 2, headDim: 16 };
    const peft = writePeftAdapter(fresh("peft"), { dims, modules: ALL_SEVEN, rank: 4, alpha: 8, seed: 5 });
    const lora = await loraFromPeft(peft.dir, work, 7n, "F32");
    const deltas = peftDeltas(peft, 8 / 4);
    const merged = mergeLora(model, deltas);
    const mergedDir = fresh("merged");
    const mergedF32 = new Map([...merged.weights].map(([name, w]) => [name, Float32Array.from(w)]));
    saveLlamaCheckpoint(mergedDir, model.config, mergedF32, "F32");
    const withAdapter = track(openEngine(model.dir));
    await collect(withAdapter.enqueue({ prompt: [1], maxNewTokens: 1, lora }));
    const adapted = withAdapter.forwardLogits(PROMPT, { taskId: 7n });
    const base = withAdapter.forwardLogits(PROMPT);
    const onMerged = track(openEngine(mergedDir)).forwardLogits(PROMPT);
    expect(relativeError(adapted, onMerged)).toBeLessThan(1e-4);
    expect(relativeError(adapted, referenceLogits(model, PROMPT, { lora: deltas }))).toBeLessThan(1e-4);
    expect(relativeError(base, onMerged)).toBeGreaterThan(1e-3); // the adapter does change the model
  });

  test("fused modules: attn_qkv splits B over q, k, v and mlp_gate_up reads B as [up; gate], with a rank per row", () => {
    const model = writeLlamaCheckpoint(fresh("model"), BASE);
    const q = 64;
    const kv = 32;
    const inter = 96;
    const random = rng(77);
    const values = (n: number) => Float32Array.from({ length: n }, () => (random() - 0.5) * 0.3);
    const rows: { module: number; layer: number; rank: number; a: Float32Array; b: Float32Array }[] = [];
    const deltas = new Map<string, LoraDelta>();
    for (let layer = 0; layer < 2; layer++) {
      const qkv = { a: values(2 * 64), b: values((q + 2 * kv) * 2) }; // rank 2, B [q + 2kv, 2]
      const gateUp = { a: values(3 * 64), b: values(2 * inter * 3) }; // rank 3, B [2I, 3] = [up; gate]
      rows.push({ module: 0, layer, rank: 2, ...qkv }, { module: 18, layer, rank: 3, ...gateUp });
      const slice = (b: Float32Array, rank: number, from: number, count: number) =>
        b.subarray(from * rank, (from + count) * rank);
      deltas.set(`${layer}/q_proj`, { a: qkv.a, b: slice(qkv.b, 2, 0, q), scale: 1 });
      deltas.set(`${layer}/k_proj`, { a: qkv.a, b: slice(qkv.b, 2, q, kv), scale: 1 });
      deltas.set(`${layer}/v_proj`, { a: qkv.a, b: slice(qkv.b, 2, q + kv, kv), scale: 1 });
      deltas.set(`${layer}/up_proj`, { a: gateUp.a, b: slice(gateUp.b, 3, 0, inter), scale: 1 });
      deltas.set(`${layer}/gate_proj`, { a: gateUp.a, b: slice(gateUp.b, 3, inter, inter), scale: 1 });
    }
    const rowLength = Math.max(...rows.map((r) => r.a.length + r.b.length));
    const weights = new Float32Array(rows.length * rowLength);
    rows.forEach((r, i) => {
      weights.set(r.a, i * rowLength);
      weights.set(r.b, i * rowLength + r.a.length);
    });
    const path = join(work, "fused.safetensors");
    writeSafetensors(path, [
      { name: "weights", dtype: "F32", shape: [rows.length, rowLength], data: weights },
      {
        name: "config",
        dtype: "I32",
        shape: [rows.length, 3],
        data: new Int32Array(rows.flatMap((r) => [r.module, r.layer, r.rank])),
      },
    ]);
    const engine = track(openEngine(model.dir));
    const lora = loraFromFile(path, 5n);
    return collect(engine.enqueue({ prompt: [1], maxNewTokens: 1, lora })).then(() => {
      const got = engine.forwardLogits(PROMPT, { taskId: 5n });
      expect(relativeError(got, referenceLogits(model, PROMPT, { lora: deltas }))).toBeLessThan(1e-4);
    });
  });

  test("a per-request scale multiplies B's contribution", async () => {
    const model = writeLlamaCheckpoint(fresh("model"), BASE);
    const dims = { hidden: 64, intermediate: 96, layers: 2, heads: 4, kvHeads: 2, headDim: 16 };
    const peft = writePeftAdapter(fresh("peft"), {
      dims,
      modules: ["q_proj", "v_proj", "down_proj"],
      rank: 2,
      alpha: 4,
    });
    const engine = track(openEngine(model.dir));
    await collect(
      engine.enqueue({ prompt: [1], maxNewTokens: 1, lora: await loraFromPeft(peft.dir, work, 3n, "F32") }),
    );
    const half = engine.forwardLogits(PROMPT, { taskId: 3n, scale: 0.5 });
    expect(
      relativeError(half, referenceLogits(model, PROMPT, { lora: peftDeltas(peft, 2, 0.5) })),
    ).toBeLessThan(1e-4);
  });

  test("a batch of mixed adapters and scales gives every sequence exactly the tokens and logprobs it gets alone", async () => {
    const model = writeLlamaCheckpoint(fresh("model"), { ...BASE, dtype: "BF16" });
    const dims = { hidden: 64, intermediate: 96, layers: 2, heads: 4, kvHeads: 2, headDim: 16 };
    const a = writePeftAdapter(fresh("peft"), { dims, modules: ALL_SEVEN, rank: 4, alpha: 16, seed: 1 });
    const b = writePeftAdapter(fresh("peft"), {
      dims,
      modules: ["q_proj", "v_proj"],
      rank: 8,
      alpha: 16,
      seed: 2,
      config: { r: 8 },
    });
    const loraA = await loraFromPeft(a.dir, work, 1n, "BF16");
    const loraB = await loraFromPeft(b.dir, work, 2n, "BF16");
    const engine = track(openEngine(model.dir, { maxBatch: 8, prefillChunk: 5 }));
    const requests = [
      { prompt: PROMPT, seed: 1 },
      { prompt: PROMPT, seed: 1, lora: loraA },
      { prompt: PROMPT.slice(3), seed: 2, lora: { ...loraA, scale: 0.5 } },
      { prompt: PROMPT.slice(1), seed: 3, lora: loraB },
      { prompt: [1, 2, 3], seed: 4, lora: { ...loraB, scale: 2 } },
      { prompt: PROMPT, seed: 5, temperature: 0, lora: loraA },
    ].map((r) => ({ maxNewTokens: 12, temperature: 0.9, topP: 0.95, topLogprobs: 2, ...r }));
    const alone = [];
    for (const r of requests) alone.push(await collect(engine.enqueue(r)));
    const together = await Promise.all(requests.map((r) => collect(engine.enqueue(r))));
    expect(together).toEqual(alone);
    expect(new Set(alone.map((o) => o.tokens.join(","))).size).toBe(requests.length); // they do differ
    expect(engine.stats().steps).toBeGreaterThan(0);
  });
});

describe("generation", () => {
  test("greedy decoding follows the reference's argmax chain, and logprobs are the raw log-softmax", async () => {
    const model = writeLlamaCheckpoint(fresh("model"), BASE);
    const engine = track(openEngine(model.dir));
    const out = await collect(
      engine.enqueue({ prompt: PROMPT, maxNewTokens: 6, temperature: 0, topLogprobs: 3 }),
    );
    expect(out.tokens).toEqual(greedy(model, PROMPT, 6));
    const logits = engine.forwardLogits([...PROMPT, ...out.tokens.slice(0, -1)]);
    out.events.forEach((event, i) => {
      const row = logits[PROMPT.length - 1 + i] as Float32Array;
      const max = Math.max(...row);
      const lse = max + Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
      expect(event.logprob).toBeCloseTo((row[event.token] as number) - lse, 4);
      expect(event.top?.length).toBe(3);
      expect(event.top?.[0]?.token).toBe(event.token);
    });
  });

  test("the same seed gives the same tokens; top_k 1 is greedy; end ids stop generation", async () => {
    const model = writeLlamaCheckpoint(fresh("model"), BASE);
    const engine = track(openEngine(model.dir));
    const sample = (seed: number) =>
      collect(engine.enqueue({ prompt: PROMPT, maxNewTokens: 10, temperature: 1.5, seed }));
    const [a, b, c] = await Promise.all([sample(9), sample(9), sample(10)]);
    expect(a.tokens).toEqual((b as typeof a).tokens);
    expect(a.tokens).not.toEqual((c as typeof a).tokens);
    const greedyOut = await collect(engine.enqueue({ prompt: PROMPT, maxNewTokens: 8, temperature: 0 }));
    const topK1 = await collect(
      engine.enqueue({ prompt: PROMPT, maxNewTokens: 8, temperature: 2, topK: 1, seed: 4 }),
    );
    expect(topK1.tokens).toEqual(greedyOut.tokens);
    const third = greedyOut.tokens[2] as number;
    const stopped = await collect(
      engine.enqueue({ prompt: PROMPT, maxNewTokens: 8, temperature: 0, endIds: [third] }),
    );
    expect(stopped.tokens).toEqual(greedyOut.tokens.slice(0, greedyOut.tokens.indexOf(third) + 1));
    expect(stopped.finishReason).toBe("end_id");
    const stopId = await collect(
      engine.enqueue({ prompt: PROMPT, maxNewTokens: 8, temperature: 0, stopIds: [third] }),
    );
    expect(stopId.finishReason).toBe("stop_id");
  });

  test("a chosen token of probability 1 (logprob exactly 0) still carries its logprob on every event", async () => {
    // Extreme weights: a final norm 2000 times larger spreads the logits so far apart that the most likely
    // token's log-softmax is exactly 0.0 in float32 (the others' exp() vanish next to 1 in double).
    const model = writeLlamaCheckpoint(fresh("model"), BASE);
    const weights = new Map(model.weights);
    const norm = weights.get("model.norm.weight") as Float32Array;
    weights.set(
      "model.norm.weight",
      norm.map((w) => w * 2000),
    );
    const extreme = saveLlamaCheckpoint(fresh("extreme"), model.config, weights, "F32");
    const engine = track(openEngine(extreme.dir));
    for (const topLogprobs of [0, 2]) {
      const out = await collect(
        engine.enqueue({ prompt: PROMPT, maxNewTokens: 6, temperature: 0, topLogprobs }),
      );
      expect(out.tokens.length).toBe(6);
      for (const event of out.events) {
        expect(event.logprob).toBe(0); // present, and exactly 0: the case a "logprob !== 0" test dropped
        expect(event.top?.length).toBe(topLogprobs);
      }
    }
    // Without logprobs asked for, none are reported.
    const plain = await collect(engine.enqueue({ prompt: PROMPT, maxNewTokens: 3, temperature: 0 }));
    for (const event of plain.events) expect(event.logprob).toBeUndefined();
  });

  test("penalties change the distribution: a huge repetition penalty forbids the prompt's tokens", async () => {
    const model = writeLlamaCheckpoint(fresh("model"), BASE);
    const engine = track(openEngine(model.dir));
    const prompt = Array.from({ length: 100 }, (_, i) => i); // most of the vocabulary
    const out = await collect(
      engine.enqueue({
        prompt,
        maxNewTokens: 5,
        temperature: 0,
        repetitionPenalty: 1e6,
        presencePenalty: 1e6,
      }),
    );
    for (const t of out.tokens) expect(t).toBeGreaterThanOrEqual(100);
    expect(new Set(out.tokens).size).toBe(out.tokens.length);
  });
});
