/**
 * The CPU engine when memory runs out inside a forward pass (made to, per engine, by the test-only
 * mlr_cpu_test_fail_allocs): the requests of the failed step end with OUT_OF_MEMORY, their slots and KV
 * are freed, and the engine goes on serving, with the very tokens it gave before.
 */
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { EngineError, RequestHandle, TokenEvent } from "../../src/engine/engine.ts";
import {
  collect,
  engineTestModel,
  LONG_NEW_TOKENS,
  LONG_POSITIONS,
  loraFromPeft,
  TINY_DIMS,
  tinySpec,
} from "../helpers/engine.ts";
import { ALL_SEVEN, writePeftAdapter } from "../helpers/peft.ts";

const SPEC = { ...tinySpec(8), maxPosition: LONG_POSITIONS };
const { work, open } = engineTestModel("failures", SPEC);
const PROMPT = [1, 9, 33, 4, 17, 60, 2];

/** Reads a request to its end: the events that came, and the error it ended with (if any). */
async function drain(
  events: AsyncIterator<TokenEvent>,
  first: TokenEvent[] = [],
): Promise<{ events: TokenEvent[]; error?: EngineError }> {
  const got = [...first];
  try {
    for (let r = await events.next(); !r.done; r = await events.next()) got.push(r.value);
    return { events: got };
  } catch (err) {
    return { events: got, error: err as EngineError };
  }
}

/** Waits for a request's first event, so it is running (past its prompt) when the test goes on. */
async function started(handle: RequestHandle) {
  const events = handle.events[Symbol.asyncIterator]();
  const first = await events.next();
  expect(first.done).toBe(false);
  return { events, first: [first.value as TokenEvent] };
}

describe("an allocation that fails in a forward step", () => {
  test("ends every request of the step with OUT_OF_MEMORY; a queued one then runs; later ones get the same tokens", async () => {
    const e = open({ maxBatch: 2, maxSeqLen: LONG_POSITIONS });
    const greedy = { maxNewTokens: 12, temperature: 0, topLogprobs: 1 };
    const before = await collect(e.enqueue({ prompt: PROMPT, ...greedy }));
    expect(before.tokens.length).toBe(12);

    // a and b fill both slots and are decoding; c waits in the queue, outside every step.
    const long = { maxNewTokens: LONG_NEW_TOKENS, temperature: 0 };
    const a = await started(e.enqueue({ prompt: PROMPT, ...long }));
    const b = await started(e.enqueue({ prompt: [5, 6, 7], ...long }));
    const c = e.enqueue({ prompt: PROMPT, ...greedy });
    expect(e.stats()).toMatchObject({ running: 2, queued: 1 });
    e.failNextScratchAllocations(1);

    for (const ended of [await drain(a.events, a.first), await drain(b.events, b.first)]) {
      expect(ended.error?.engineCode).toBe("OUT_OF_MEMORY");
      expect(ended.error?.message).toContain("out of memory in a forward step");
      expect(ended.events.length).toBeGreaterThan(0); // the tokens before the failure stand
      expect(ended.events.length).toBeLessThan(LONG_NEW_TOKENS);
      expect(ended.events.every((event) => event.finishReason === null)).toBe(true);
    }
    expect(await collect(c)).toEqual(before);
    const after = await collect(e.enqueue({ prompt: PROMPT, ...greedy }));
    expect(after).toEqual(before);
    expect(e.stats()).toMatchObject({ running: 0, queued: 0, kvBytesUsed: 0 });
  });

  test("in a LoRA delta: the adapter's request ends, the adapter stays cached and unused, and serves again", async () => {
    const e = open();
    const peft = writePeftAdapter(join(work, "peft"), {
      dims: TINY_DIMS,
      modules: ALL_SEVEN,
      rank: 4,
      alpha: 8,
      seed: 3,
    });
    const lora = await loraFromPeft(peft.dir, work, 5n, "F32");
    const request = { prompt: PROMPT, maxNewTokens: 8, temperature: 0 };
    const before = await collect(e.enqueue({ ...request, lora }));
    // The first allocation of a step with an adapter is the attn_qkv delta of layer 0.
    e.failNextScratchAllocations(1);
    const failed = await drain(
      e.enqueue({ ...request, lora: { taskId: 5n } }).events[Symbol.asyncIterator](),
    );
    expect(failed.error?.engineCode).toBe("OUT_OF_MEMORY");
    expect(failed.events).toEqual([]); // it failed in its prefill
    expect(e.stats()).toMatchObject({ running: 0, kvBytesUsed: 0, loraTasks: 1 });
    expect(e.stats().tasks[0]).toMatchObject({ taskId: 5n, active: 0 });
    expect(await collect(e.enqueue({ ...request, lora: { taskId: 5n } }))).toEqual(before);
  });

  test("in forwardLogits: the call fails with OUT_OF_MEMORY and the next one gives the same logits", () => {
    const e = open({ prefillChunk: 3 }); // several chunks: the failure comes in the first
    const before = e.forwardLogits(PROMPT);
    e.failNextScratchAllocations(1);
    let error: EngineError | undefined;
    try {
      e.forwardLogits(PROMPT);
    } catch (err) {
      error = err as EngineError;
    }
    expect(error?.engineCode).toBe("OUT_OF_MEMORY");
    expect(error?.message).toContain("out of memory in the forward pass");
    expect(e.forwardLogits(PROMPT)).toEqual(before);
  });

  test("the hook is per engine, is cleared by 0, and refuses a negative count", async () => {
    const failing = open();
    const other = open();
    const request = { prompt: PROMPT, maxNewTokens: 4, temperature: 0 };
    failing.failNextScratchAllocations(1000);
    const refused = await drain(failing.enqueue(request).events[Symbol.asyncIterator]());
    expect(refused.error?.engineCode).toBe("OUT_OF_MEMORY");
    const fine = await collect(other.enqueue(request));
    expect(fine.tokens.length).toBe(4);
    failing.failNextScratchAllocations(0);
    expect(await collect(failing.enqueue(request))).toEqual(fine);
    expect(() => failing.failNextScratchAllocations(-1)).toThrow("returned 1");
  });
});
