/**
 * Prefix (KV) reuse in the CPU engine: a prompt that starts with blocks computed before copies them, and
 * gets exactly the tokens and logprobs it gets without reuse; blocks are keyed by adapter and scale, stay
 * within the KV budget, and n identical prompts share one prefill.
 */
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { GenerateRequest } from "../../src/engine/engine.ts";
import {
  collect,
  engineTestModel,
  LONG_NEW_TOKENS,
  LONG_POSITIONS,
  loraFromPeft,
  TINY_DIMS,
  tinySpec,
} from "../helpers/engine.ts";
import { writePeftAdapter } from "../helpers/peft.ts";

const { work, open } = engineTestModel("prefix", { ...tinySpec(11, 256), dtype: "BF16" });
/** For requests that must still be running while the test looks. */
const long = engineTestModel("prefix-long", { ...tinySpec(12, 256), maxPosition: LONG_POSITIONS });
const BLOCK = 16;
/** KV bytes per token: 2 (K and V) x 2 layers x 32 (kv width) x 4 bytes. */
const KV_PER_TOKEN = 2 * 2 * 32 * 4;

/** A prompt of n tokens from a seed (ids 1..255). */
function prompt(n: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => 1 + ((i * 37 + seed * 101 + ((i * i) % 7)) % 255));
}

const request = (p: number[], extra: Partial<GenerateRequest> = {}): GenerateRequest => ({
  prompt: p,
  maxNewTokens: 12,
  temperature: 0.8,
  seed: 3,
  topLogprobs: 3,
  ...extra,
});

/** An engine without reuse: the reference every reused run must equal. */
const plain = open({ kvCacheReuse: false });
const reference = (r: GenerateRequest) => collect(plain.enqueue(r));

describe("a repeated prompt", () => {
  test("copies its whole blocks before the last position, and answers exactly as without reuse", async () => {
    const e = open({ kvBlockTokens: BLOCK });
    const p = prompt(100, 1);
    const first = await collect(e.enqueue(request(p)));
    expect(e.stats()).toMatchObject({ prefixQueryTokens: 100, prefixHitTokens: 0, prefixReusedBlocks: 0 });
    // The first run stored its prompt's and answer's whole blocks: 100 + 11 positions have K/V.
    expect(e.stats().prefixBlocks).toBe(Math.floor(111 / BLOCK));
    await collect(e.enqueue(request(prompt(100, 99)))); // (its K/V overwrite the memory the first one freed)
    const second = await collect(e.enqueue(request(p)));
    // 96 of 100 (six blocks; the last position is always computed, so block seven is not reused).
    expect(e.stats()).toMatchObject({ prefixQueryTokens: 300, prefixHitTokens: 96, prefixReusedBlocks: 6 });
    expect(second).toEqual(first);
    expect(first).toEqual(await reference(request(p)));
    expect(plain.stats()).toMatchObject({ prefixHitTokens: 0, prefixBlocks: 0, prefixBytes: 0 });
  });

  test("a longer prompt continues the blocks of an earlier prompt and its answer (a chat's next turn)", async () => {
    const e = open({ kvBlockTokens: BLOCK });
    const p = prompt(40, 2);
    const turn1 = await collect(e.enqueue(request(p, { maxNewTokens: 30, temperature: 0 })));
    const next = [...p, ...turn1.tokens, ...prompt(20, 3)];
    const before = e.stats().prefixHitTokens;
    const turn2 = await collect(e.enqueue(request(next)));
    // 40 + 29 positions of turn 1 had K/V: four whole blocks (64 tokens) are reused.
    expect(e.stats().prefixHitTokens - before).toBe(64);
    expect(turn2).toEqual(await reference(request(next)));
  });

  test("a prompt that shares only its first blocks reuses those and computes the rest", async () => {
    const e = open({ kvBlockTokens: BLOCK });
    const p = prompt(64, 4);
    await collect(e.enqueue(request(p)));
    const fork = [...p.slice(0, 40), ...prompt(30, 5)];
    const before = e.stats().prefixHitTokens;
    const got = await collect(e.enqueue(request(fork)));
    expect(e.stats().prefixHitTokens - before).toBe(32); // blocks 0 and 1; block 2 differs at token 40
    expect(got).toEqual(await reference(request(fork)));
  });

  test("prompts that fit in one block, or end at a block's last token, compute what they must", async () => {
    const e = open({ kvBlockTokens: BLOCK });
    for (const n of [1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK]) {
      const p = prompt(n, 6 + n);
      await collect(e.enqueue(request(p)));
      const before = e.stats().prefixHitTokens;
      const again = await collect(e.enqueue(request(p)));
      expect(e.stats().prefixHitTokens - before).toBe(Math.floor((n - 1) / BLOCK) * BLOCK);
      expect(again).toEqual(await reference(request(p)));
    }
  });
});

describe("keys", () => {
  test("blocks are reused only under the same adapter and the same lora_scale", async () => {
    const peft = writePeftAdapter(join(work, "peft"), {
      dims: TINY_DIMS,
      modules: ["k_proj", "v_proj", "q_proj"],
      rank: 4,
      alpha: 8,
      seed: 9,
    });
    const lora = await loraFromPeft(peft.dir, work, 21n, "BF16");
    const e = open({ kvBlockTokens: BLOCK });
    const p = prompt(50, 7);
    const variants: Partial<GenerateRequest>[] = [{}, { lora }, { lora: { ...lora, scale: 0.5 } }];
    const answers = [];
    for (const v of variants) answers.push(await collect(e.enqueue(request(p, v))));
    expect(e.stats().prefixHitTokens).toBe(0); // three keys: nothing shared
    for (const [i, v] of variants.entries()) {
      const before = e.stats().prefixHitTokens;
      const again = await collect(e.enqueue(request(p, v)));
      expect(e.stats().prefixHitTokens - before).toBe(48);
      expect(again).toEqual(answers[i] as (typeof answers)[number]);
      expect(again).toEqual(await reference(request(p, v)));
    }
    expect(new Set(answers.map((a) => a.tokens.join(","))).size).toBe(3); // the keys do change the K/V
  });
});

describe("n identical prompts at once", () => {
  test("share one prefill: the first computes each block, the others copy it", async () => {
    const e = open({ kvBlockTokens: BLOCK, prefillChunk: 256 });
    const p = prompt(70, 8);
    const runs = await Promise.all([1, 2, 3].map((seed) => collect(e.enqueue(request(p, { seed })))));
    // Two of the three copy all four reusable blocks (64 of 70 tokens) instead of computing them.
    expect(e.stats()).toMatchObject({ prefixQueryTokens: 210, prefixHitTokens: 128, prefixReusedBlocks: 8 });
    for (const [i, run] of runs.entries()) expect(run).toEqual(await reference(request(p, { seed: i + 1 })));
  });
});

describe("the KV budget", () => {
  test("blocks live in the budget's free room, the least recently used go first, and never hold back a request", async () => {
    // Room for 400 positions; each request reserves prompt + 12.
    const e = open({ kvBlockTokens: BLOCK, kvCacheBytes: 400 * KV_PER_TOKEN, maxSeqLen: 400 });
    const blockBytes = e.stats().prefixBytes; // 0 now
    expect(blockBytes).toBe(0);
    const prompts = [1, 2, 3, 4, 5, 6].map((s) => prompt(80, 20 + s));
    for (const p of prompts) {
      await collect(e.enqueue(request(p)));
      const s = e.stats();
      expect(s.kvBytesUsed + s.prefixBytes).toBeLessThanOrEqual(s.kvBytesCapacity);
    }
    // 6 x 5 blocks of 16 positions do not fit in 400 positions (less headers): the oldest went.
    const kept = e.stats().prefixBlocks;
    expect(kept).toBeLessThan(30);
    expect(kept).toBeGreaterThan(10);
    const last = prompts.at(-1) as number[];
    const before = e.stats().prefixHitTokens;
    await collect(e.enqueue(request(last)));
    expect(e.stats().prefixHitTokens - before).toBe(64); // the newest prompt is still there
    const first = prompts[0] as number[];
    const before2 = e.stats().prefixHitTokens;
    await collect(e.enqueue(request(first)));
    expect(e.stats().prefixHitTokens - before2).toBe(0); // the oldest was evicted
    // A request that needs nearly the whole budget evicts the blocks instead of waiting for them.
    const big = await collect(e.enqueue(request(prompt(380, 40), { maxNewTokens: 10 })));
    expect(big.tokens.length).toBe(10);
    const s = e.stats();
    expect(s.kvBytesUsed + s.prefixBytes).toBeLessThanOrEqual(s.kvBytesCapacity);
  });

  test("a running generation's stored blocks give way to a queued request", async () => {
    // Room for exactly two long requests: a's blocks, stored as it decodes, fill the room b needs.
    const positions = 3 + LONG_NEW_TOKENS;
    const e = long.open({
      kvBlockTokens: BLOCK,
      kvCacheBytes: 2 * positions * KV_PER_TOKEN,
      maxSeqLen: LONG_POSITIONS,
    });
    const ask = (p: number[]) => e.enqueue({ prompt: p, maxNewTokens: LONG_NEW_TOKENS, temperature: 0 });
    const a = ask([1, 2, 3]);
    const aEvents = a.events[Symbol.asyncIterator]();
    for (let i = 0; i < 200; i++) expect((await aEvents.next()).done).toBe(false);
    expect(e.stats().prefixBlocks).toBeGreaterThanOrEqual(200 / BLOCK - 1);
    const b = ask([4, 5, 6]);
    const bEvents = b.events[Symbol.asyncIterator]();
    expect((await bEvents.next()).done).toBe(false); // b runs beside a, not after it
    const s = e.stats();
    expect(s).toMatchObject({ running: 2, queued: 0, kvBytesUsed: 2 * positions * KV_PER_TOKEN });
    expect(s.kvBytesUsed + s.prefixBytes).toBeLessThanOrEqual(s.kvBytesCapacity);
    a.cancel();
    b.cancel();
    expect((await collect(a)).finishReason).toBe("cancelled");
    expect((await collect(b)).finishReason).toBe("cancelled");
  });

  test("with reuse off nothing is kept or looked up", async () => {
    const p = prompt(60, 30);
    await reference(request(p));
    await reference(request(p));
    expect(plain.stats()).toMatchObject({ prefixQueryTokens: 0, prefixHitTokens: 0, prefixBlocks: 0 });
  });
});
