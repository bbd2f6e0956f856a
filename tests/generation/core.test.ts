/**
 * The generation core over a fake engine whose steps the test drives: admission order, wake-up when room
 * comes free (no polling, no sleeps), the load-mode retry, and the task built once.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as v from "valibot";
import { ChatCompletionRequestSchema, CompletionRequestSchema } from "../../src/api/schemas.ts";
import { loadChatTemplate } from "../../src/engine/chat-template.ts";
import { DEMO_PRESETS, writeDemoModel } from "../../src/engine/demo-model.ts";
import { loadTokenizer, type Tokenizer } from "../../src/engine/tokenizer.ts";
import { MultiloraError } from "../../src/errors.ts";
import { GenerationCore } from "../../src/generation/core.ts";
import type { Generation } from "../../src/generation/generation.ts";
import { LoraRegistry } from "../../src/lora/registry.ts";
import { FakeEngine, settle } from "../helpers/fake-engine.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-core-"));
let tokenizer: Tokenizer;
let registry: LoraRegistry;
const modelDir = join(work, "model");

beforeAll(() => {
  const demo = writeDemoModel(modelDir);
  // Two more adapters with other contents (so other task ids): the second demo model's.
  const other = writeDemoModel(join(work, "other"), { seed: 7 });
  copyFileSync(join(other.loraDir, "demo-all.safetensors"), join(demo.loraDir, "third.safetensors"));
  copyFileSync(join(other.loraDir, "demo-attention.safetensors"), join(demo.loraDir, "fourth.safetensors"));
  tokenizer = loadTokenizer(modelDir);
  const { hidden, intermediate, layers, heads, kvHeads, headDim } = DEMO_PRESETS.tiny;
  registry = new LoraRegistry({
    dir: demo.loraDir,
    cacheDir: join(work, "cache"),
    requirements: {
      dims: { hidden, intermediate, layers, heads, kvHeads, headDim },
      modelPath: join(modelDir, "config.json"),
      dtype: "BF16",
      maxRank: 64,
    },
  });
});
afterAll(() => {
  registry.close();
  rmSync(work, { recursive: true, force: true });
});

function coreOver(engine: FakeEngine, settings: { maxRequests?: number; queueTimeoutMs?: number } = {}) {
  return new GenerationCore(engine, tokenizer, loadChatTemplate(modelDir), registry, {
    servedNames: ["demo"],
    maxRequests: settings.maxRequests ?? 64,
    queueTimeoutMs: settings.queueTimeoutMs ?? 60_000,
    requestTimeoutMs: 0,
  });
}

const completion = (fields: Record<string, unknown>) =>
  v.parse(CompletionRequestSchema, { model: "demo", prompt: [1, 2, 3], max_tokens: 3, ...fields });

async function taskFor(core: GenerationCore, fields: Record<string, unknown>) {
  const body = completion(fields);
  return core.completionTask(body, await core.target(body.model, body.lora_model, null));
}

/**
 * Starts a request and lets it reach the engine; `started` settles when its first token is in (or it
 * failed).
 */
async function begin(core: GenerationCore, fields: Record<string, unknown>) {
  const task = await taskFor(core, fields);
  const state: { generation?: Generation; error?: unknown } = {};
  const started = core.start(task).then(
    (g) => {
      state.generation = g;
    },
    (e) => {
      state.error = e;
    },
  );
  await settle();
  return { state, started };
}

describe("admission with a full adapter cache", () => {
  test("the oldest waiter is woken when a request ends, the others keep waiting; no polling", async () => {
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
    const core = coreOver(engine);
    const a = await begin(core, { lora_model: "demo-all", max_tokens: 3 });
    engine.step(); // a admitted, first token
    await a.started;
    expect(a.state.generation).toBeDefined();

    const b = await begin(core, { lora_model: "third" });
    const c = await begin(core, { lora_model: "fourth" });
    engine.step(); // b and c: LORA_CACHE_FULL (demo-all is active); a: second token
    await settle();
    expect(core.admission.size).toBe(3);
    const tries = () =>
      engine.enqueued.filter((e) => e.taskId !== null).map((e) => e.taskId as bigint | null | undefined);
    const versions = await Promise.all(["demo-all", "third", "fourth"].map((n) => registry.get(n)));
    const [a1, b1, c1] = versions.map((version) => version.taskId as bigint | null);
    expect(tries()).toEqual([a1, b1, c1]);

    // Nothing happens by itself: no retries while no room came free.
    await settle();
    expect(tries()).toHaveLength(3);

    engine.step(); // a's last token: a ends, room comes free: b (the oldest) is sent again, not c
    await settle();
    expect(tries()).toEqual([a1, b1, c1, b1]);
    engine.step(); // b admitted (demo-all evicted), first token
    await b.started;
    expect(b.state.generation).toBeDefined();
    expect(c.state.generation).toBeUndefined();

    engine.runToEnd(); // b ends: c's turn
    await settle();
    engine.runToEnd();
    await c.started;
    expect(c.state.generation).toBeDefined();
    expect(tries()).toEqual([a1, b1, c1, b1, c1]);
    await settle();
    expect(core.admission.size).toBe(0);
  });

  test("unpinning an adapter wakes a waiter", async () => {
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
    const core = coreOver(engine);
    const pinned = await registry.get("demo-attention");
    const load = core.loadAdapter(pinned, { pin: true });
    await settle();
    engine.runToEnd();
    await load;
    const w = await begin(core, { lora_model: "demo-all" });
    await settle();
    engine.step(); // LORA_CACHE_FULL: the only slot is pinned
    await settle();
    expect(w.state.generation).toBeUndefined();
    core.unpinAdapter(pinned);
    await settle();
    engine.step();
    await w.started;
    expect(w.state.generation).toBeDefined();
    engine.runToEnd();
  });

  test("no room within the queue timeout: 503 lora_cache_full", async () => {
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
    const core = coreOver(engine, { queueTimeoutMs: 50 });
    const a = await begin(core, { lora_model: "demo-all", max_tokens: 100 });
    engine.step();
    await a.started;
    const b = await begin(core, { lora_model: "third" });
    await settle();
    engine.step();
    await b.started;
    expect(b.state.error).toBeInstanceOf(MultiloraError);
    expect((b.state.error as MultiloraError).code).toBe("lora_cache_full");
    a.state.generation?.cancel();
    engine.runToEnd();
    await settle();
    expect(core.admission.size).toBe(0);
  });

  test("--max-queue: requests beyond the limit get 503 overloaded at once; a finished one frees its slot", async () => {
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
    const core = coreOver(engine, { maxRequests: 2 });
    const first = await begin(core, {});
    const second = await begin(core, {});
    const third = await begin(core, {});
    await third.started;
    expect((third.state.error as MultiloraError).code).toBe("overloaded");
    engine.runToEnd();
    await Promise.all([first.started, second.started]);
    await Promise.all([first.state.generation?.collect(), second.state.generation?.collect()]);
    const fourth = await begin(core, {});
    engine.runToEnd();
    await fourth.started;
    expect(fourth.state.generation).toBeDefined();
  });

  test("draining refuses new requests with shutting_down and resolves when the held ones end", async () => {
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
    const core = coreOver(engine);
    const running = await begin(core, { max_tokens: 2 });
    engine.step();
    await running.started;
    let drained = false;
    const drain = core.drain(60_000).then(() => {
      drained = true;
    });
    const late = await begin(core, {});
    await late.started;
    expect((late.state.error as MultiloraError).code).toBe("shutting_down");
    await settle();
    expect(drained).toBe(false);
    engine.runToEnd();
    await drain;
    expect(drained).toBe(true);
  });

  test("draining answers a request waiting for adapter room and one queued in the engine at once; a running one is stopped at the timeout", async () => {
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
    const core = coreOver(engine);
    const running = await begin(core, { lora_model: "demo-all", max_tokens: 100 });
    engine.step();
    await running.started;
    const waiting = await begin(core, { lora_model: "third" });
    engine.step(); // LORA_CACHE_FULL: waits for room
    await settle();
    const queued = await begin(core, {}); // enqueued, no step yet: queued in the engine
    expect(core.admission.size).toBe(3);
    let drained = false;
    const drain = core.drain(80).then(() => {
      drained = true;
    });
    await settle();
    engine.step(); // the engine answers the cancelled queued request
    await Promise.all([waiting.started, queued.started]);
    expect((waiting.state.error as MultiloraError).code).toBe("shutting_down");
    expect((queued.state.error as MultiloraError).code).toBe("shutting_down");
    const events = (async () => {
      const seen: string[] = [];
      for await (const e of running.state.generation?.events ?? [])
        seen.push(e.type === "error" ? e.error.code : "token");
      return seen;
    })();
    engine.step(); // the running one goes on while the drain waits
    await settle();
    expect(drained).toBe(false);
    await new Promise((resolve) => setTimeout(resolve, 100)); // the drain timeout: the running one is stopped
    engine.step();
    await drain;
    expect((await events).at(-1)).toBe("shutting_down");
    expect(core.admission.size).toBe(0);
  });
});

describe("load modes", () => {
  test("auto: an adapter evicted behind the server's back is sent again once, with its weights", async () => {
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 2, listsTasks: false });
    const core = coreOver(engine);
    const first = await begin(core, { lora_model: "demo-all", max_tokens: 1 });
    engine.runToEnd();
    await first.started;
    const version = await registry.get("demo-all");
    engine.forget(version.taskId);
    const again = await begin(core, { lora_model: "demo-all", max_tokens: 1 });
    await settle();
    engine.step(); // LORA_NOT_CACHED: the server believed it cached
    await settle();
    engine.runToEnd();
    await again.started;
    expect(again.state.generation).toBeDefined();
    expect(engine.enqueued.map((e) => e.withWeights)).toEqual([true, false, true]);
  });

  test("never: a miss is a 409 lora_not_cached, not retried", async () => {
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 2 });
    const core = coreOver(engine);
    const r = await begin(core, { lora_model: "demo-all", load_lora_weights: "never" });
    await settle();
    engine.step();
    await r.started;
    expect((r.state.error as MultiloraError).code).toBe("lora_not_cached");
    expect(engine.enqueued).toHaveLength(1);
  });

  test("always: weights go with every request", async () => {
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 2 });
    const core = coreOver(engine);
    for (let i = 0; i < 2; i++) {
      const r = await begin(core, { lora_model: "demo-all", load_lora_weights: "always", max_tokens: 1 });
      await settle();
      engine.runToEnd();
      await r.started;
      await r.state.generation?.collect();
    }
    expect(engine.enqueued.map((e) => e.withWeights)).toEqual([true, true]);
  });
});

describe("the task", () => {
  test("is built once, frozen, and what the engine receives", async () => {
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 2 });
    const core = coreOver(engine);
    const task = await taskFor(core, { prompt: [[5, 6], [7]], n: 2, seed: 10, temperature: 0.5, stop: "x" });
    expect(Object.isFrozen(task)).toBe(true);
    expect(Object.isFrozen(task.choices[0]?.request)).toBe(true);
    expect(task.choices.map((c) => [c.index, c.promptIndex, c.request.seed])).toEqual([
      [0, 0, 10n],
      [1, 0, 11n],
      [2, 1, 10n],
      [3, 1, 11n],
    ]);
    expect(task.promptTokens).toBe(3);
    expect(task.stop).toEqual(["x"]);
    expect(() => {
      (task as { model: string }).model = "other";
    }).toThrow();
  });

  test("fields that would change the output and are not implemented are refused, naming each", async () => {
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 2 });
    const core = coreOver(engine);
    const body = v.parse(ChatCompletionRequestSchema, {
      model: "demo",
      messages: [{ role: "user", content: "hi" }],
      min_tokens: 3,
      ignore_eos: true,
      prediction: { type: "content", content: "x" },
    });
    const target = await core.target("demo", null, null);
    let error: MultiloraError | undefined;
    try {
      core.chatTask(body, target);
    } catch (e) {
      error = e as MultiloraError;
    }
    expect(error?.code).toBe("unsupported_field");
    expect(error?.param).toBe("min_tokens");
    expect(error?.message).toContain("min_tokens");
    expect(error?.message).toContain("ignore_eos");
    expect(error?.message).toContain("prediction");
    // What asks for no change is accepted.
    const harmless = v.parse(ChatCompletionRequestSchema, {
      model: "demo",
      messages: [{ role: "user", content: "hi" }],
      response_format: { type: "text" },
      logit_bias: {},
      tools: [],
    });
    expect(core.chatTask(harmless, target).choices).toHaveLength(1);
  });

  test("a logprob of exactly 0.0 is reported for every token", async () => {
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 2 });
    const core = coreOver(engine);
    const task = await taskFor(core, { max_tokens: 4, logprobs: 0 });
    const started = core.start(task);
    engine.runToEnd();
    const [result] = await (await started).collect();
    expect(result?.tokenIds).toHaveLength(4);
    expect(result?.logprobs.map((l) => l.logprob)).toEqual([0, 0, 0, 0]);
  });
});
