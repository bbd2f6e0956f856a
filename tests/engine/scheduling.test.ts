/** The CPU engine's scheduling and its errors: cancel, the KV budget, bad requests, bad models, bad adapters. */
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadCheckpoint } from "../../src/engine/checkpoint.ts";
import { CpuEngine } from "../../src/engine/cpu-engine.ts";
import type { EngineError } from "../../src/engine/engine.ts";
import { writeLlamaCheckpoint } from "../../src/engine/random-checkpoint.ts";
import {
  collect,
  engineTestModel,
  LONG_NEW_TOKENS,
  LONG_POSITIONS,
  loraFromPeft,
  tinySpec,
} from "../helpers/engine.ts";
import { writePeftAdapter } from "../helpers/peft.ts";

const SPEC = { ...tinySpec(4), maxPosition: LONG_POSITIONS };
const { work, model, open } = engineTestModel("sched", SPEC);
/** KV bytes per token: 2 (K and V) x 2 layers x 32 (kv width) x 4 bytes. */
const KV_PER_TOKEN = 2 * 2 * 32 * 4;

describe("cancel", () => {
  test("a cancelled request ends with 'cancelled' and its slot and KV are free before the next step", async () => {
    const e = open({ maxSeqLen: LONG_POSITIONS });
    const handle = e.enqueue({ prompt: [1, 2, 3], maxNewTokens: LONG_NEW_TOKENS, temperature: 0 });
    const events = handle.events[Symbol.asyncIterator]();
    expect((await events.next()).done).toBe(false);
    handle.cancel();
    let last = await events.next();
    while (!last.done && last.value.finishReason === null) last = await events.next();
    expect(last.value?.finishReason).toBe("cancelled");
    // The cancelled response is sent when the slot is freed, which happens before the next step.
    expect(e.stats()).toMatchObject({ running: 0, queued: 0, kvBytesUsed: 0 });
  });

  test("a queued request can be cancelled before it starts", async () => {
    const e = open({ maxBatch: 1 });
    const first = e.enqueue({ prompt: [1], maxNewTokens: 30, temperature: 0 });
    const second = e.enqueue({ prompt: [1], maxNewTokens: 30, temperature: 0 });
    second.cancel();
    expect((await collect(second)).finishReason).toBe("cancelled");
    expect((await collect(first)).tokens.length).toBe(30);
  });
});

describe("the KV budget", () => {
  test("a request that does not fit now waits for room, then runs", async () => {
    const aTokens = 3 + LONG_NEW_TOKENS;
    const e = open({ kvCacheBytes: (aTokens + 10) * KV_PER_TOKEN, maxSeqLen: LONG_POSITIONS });
    const a = e.enqueue({ prompt: [1, 2, 3], maxNewTokens: LONG_NEW_TOKENS, temperature: 0 });
    await a.events[Symbol.asyncIterator]().next();
    // a's tokens + 23 do not fit in a's + 10: b waits in the queue until a ends.
    const b = e.enqueue({ prompt: [4, 5, 6], maxNewTokens: 20, temperature: 0 });
    expect(e.stats()).toMatchObject({ running: 1, queued: 1, kvBytesUsed: aTokens * KV_PER_TOKEN });
    a.cancel();
    expect((await collect(a)).finishReason).toBe("cancelled");
    expect((await collect(b)).tokens.length).toBe(20);
    expect(e.stats()).toMatchObject({ running: 0, queued: 0, kvBytesUsed: 0 });
  });

  test("a request bigger than the whole budget is refused with the numbers", async () => {
    const e = open({ kvCacheBytes: 10 * KV_PER_TOKEN });
    const attempt = collect(e.enqueue({ prompt: [1, 2, 3], maxNewTokens: 20, temperature: 0 }));
    await expect(attempt).rejects.toThrow(
      `the request needs ${23 * KV_PER_TOKEN} bytes of KV cache (23 tokens) but the budget is ${10 * KV_PER_TOKEN}`,
    );
  });
});

describe("bad requests are refused at enqueue, every problem named", () => {
  test("empty prompt, out-of-vocabulary token, too long, bad sampling values", () => {
    const e = open({ maxSeqLen: 32 });
    const refuse = (request: Parameters<CpuEngine["enqueue"]>[0]) => {
      try {
        e.enqueue(request);
        return "accepted";
      } catch (err) {
        return `${(err as EngineError).engineCode}: ${(err as Error).message}`;
      }
    };
    expect(refuse({ prompt: [], maxNewTokens: 4 })).toBe("INVALID_ARGUMENT: the prompt is empty");
    expect(refuse({ prompt: [1, 64], maxNewTokens: 4 })).toBe(
      "INVALID_ARGUMENT: prompt token 64 at position 1 is outside the vocabulary (0..63)",
    );
    expect(refuse({ prompt: [1, 2], maxNewTokens: 31 })).toBe(
      "INVALID_ARGUMENT: prompt (2 tokens) + max_new_tokens (31) exceeds max_seq_len 32",
    );
    const many = refuse({ prompt: [1], maxNewTokens: 0, temperature: -1, topP: 0, topLogprobs: 21 });
    for (const part of [
      "max_new_tokens must be at least 1",
      "temperature must not be negative",
      "top_p must be in (0, 1]",
      "top_logprobs must be in -1..20",
    ]) {
      expect(many).toContain(part);
    }
  });
});

describe("models the engine cannot run are refused with the field or tensor named", () => {
  test("an unsupported architecture, activation or rope scaling", () => {
    const dir = join(work, "odd");
    writeLlamaCheckpoint(dir, SPEC);
    const config = JSON.parse(require("node:fs").readFileSync(join(dir, "config.json"), "utf8"));
    writeFileSync(
      join(dir, "config.json"),
      JSON.stringify({
        ...config,
        architectures: ["GPT2LMHeadModel"],
        hidden_act: "gelu",
        rope_scaling: { rope_type: "yarn", factor: 4 },
      }),
    );
    let message = "";
    try {
      loadCheckpoint(dir);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain(
      'architectures: ["GPT2LMHeadModel"]; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM',
    );
    expect(message).toContain('hidden_act: "gelu"; only silu is supported');
    expect(message).toContain('rope_scaling: type "yarn" is not supported (none or llama3)');
  });

  test("missing and misshapen tensors are all listed by the engine", () => {
    const checkpoint = loadCheckpoint(model.dir);
    const tensors = checkpoint.tensors
      .filter((t) => t.name !== "model.layers.1.mlp.up_proj.weight")
      .map((t) => (t.name === "model.norm.weight" ? { ...t, shape: [32] } : t));
    let message = "";
    try {
      CpuEngine.create({ ...checkpoint, tensors }, { threads: 1 });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain("the CPU engine cannot load this model");
    expect(message).toContain("model.norm.weight: shape [32], expected [64]");
    expect(message).toContain("model.layers.1.mlp.up_proj.weight: missing");
  });
});

describe("adapters that do not fit the model are refused with every problem", () => {
  test("wrong dtype, rank over the limit, a layer the model lacks, a module it lacks, DoRA", async () => {
    const e = open({ maxLoraRank: 4 });
    const dims = { hidden: 64, intermediate: 96, layers: 2, heads: 4, kvHeads: 2, headDim: 16 };
    const peft = writePeftAdapter(join(work, "peft"), { dims, rank: 2, alpha: 4 });
    const good = await loraFromPeft(peft.dir, work, 1n, "F32");
    const rows = (good.config as Int32Array).length / 3;
    const config = new Int32Array(rows * 4);
    for (let r = 0; r < rows; r++)
      config.set([...(good.config as Int32Array).subarray(3 * r, 3 * r + 3), 0], 4 * r);
    config.set([1, 7, 2, 0], 0); // layer 7
    config.set([3, 0, 8, 0], 4); // rank 8 > 4
    config.set([16, 1, 2, 0], 8); // moe_router
    config.set([2, 1, 2, 1], 12); // DoRA
    const bad = { ...good, taskId: 2n, config, configWidth: 4 as const };
    const message = await collect(e.enqueue({ prompt: [1], maxNewTokens: 1, lora: bad })).then(
      () => "accepted",
      (err: Error) => err.message,
    );
    expect(message).toContain("row 0: attn_q layer 7 does not exist (the model has 2 layers)");
    expect(message).toContain("row 1: attn_v rank 8 is outside 1..4 (max_lora_rank)");
    expect(message).toContain("row 2: module moe_router does not exist in this model");
    expect(message).toContain("row 3: DoRA rows are not supported");
    const bf16 = await loraFromPeft(peft.dir, work, 3n, "BF16");
    const wrongDtype = await collect(e.enqueue({ prompt: [1], maxNewTokens: 1, lora: bf16 })).then(
      () => "accepted",
      (err: Error & { engineCode?: string }) => `${err.engineCode}: ${err.message}`,
    );
    expect(wrongDtype).toBe("LORA_INVALID: weights dtype 2, but this engine's adapters must have dtype 0");
    expect(e.stats().loraTasks).toBe(0);
  });
});
