/**
 * The CPU engine's LoRA cache as a state machine (TensorRT-LLM's PEFT cache rules, ARCHITECTURE.md
 * section 4): after every step, the exact table of cached tasks and the counters.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CpuEngine } from "../../src/engine/cpu-engine.ts";
import type { LoraRef } from "../../src/engine/engine.ts";
import { writeLlamaCheckpoint } from "../../src/engine/random-checkpoint.ts";
import { collect, LONG_NEW_TOKENS, LONG_POSITIONS, loraFromPeft, openEngine } from "../helpers/engine.ts";
import { writePeftAdapter } from "../helpers/peft.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-cache-"));
let engine: CpuEngine | undefined;
afterAll(async () => {
  await engine?.close();
  rmSync(work, { recursive: true, force: true });
});

const DIMS = { hidden: 64, intermediate: 96, layers: 2, heads: 4, kvHeads: 2, headDim: 16 };
/** One adapter: rank 2 on q (64 -> 64) and v (64 -> 32) in 2 layers, stored as f32. */
const ADAPTER_BYTES = 2 * (2 * (64 + 64) + 2 * (64 + 32)) * 4;
/** The largest adapter at max_lora_rank 2: all seven modules. */
const MAX_ADAPTER_BYTES = 2 * 2 * (64 + 64 + (64 + 32) * 2 + (64 + 64) + (64 + 96) * 3) * 4;

test("the cache follows put, hit, LRU eviction, not cached, pin, pin cap, active, full, no overwrite and release", async () => {
  const model = writeLlamaCheckpoint(join(work, "model"), {
    ...DIMS,
    vocab: 64,
    seed: 2,
    maxPosition: LONG_POSITIONS,
  });
  // Two adapters at most; room for one pinned adapter besides the max-size reserve.
  engine = openEngine(model.dir, {
    maxSeqLen: LONG_POSITIONS,
    maxLoras: 2,
    maxLoraRank: 2,
    loraCacheBytes: MAX_ADAPTER_BYTES + ADAPTER_BYTES,
  });
  const e = engine;
  const adapters = new Map<bigint, LoraRef>();
  for (const id of [1n, 2n, 3n, 4n, 5n, 99n]) {
    const peft = writePeftAdapter(join(work, `peft-${id}`), {
      dims: DIMS,
      rank: 2,
      alpha: 4,
      seed: Number(id),
    });
    adapters.set(id, await loraFromPeft(peft.dir, work, id, "F32"));
  }
  const withWeights = (id: bigint) => adapters.get(id) as LoraRef;
  const idOnly = (id: bigint): LoraRef => ({ taskId: id });
  const run = (lora: LoraRef, maxNewTokens = 1) =>
    collect(e.enqueue({ prompt: [1, 2, 3], maxNewTokens, temperature: 0, lora }));
  const failure = (lora: LoraRef) =>
    run(lora).then(
      () => "no error",
      (err: Error & { engineCode?: string }) => `${err.engineCode}: ${err.message}`,
    );
  const table = () =>
    e
      .stats()
      .tasks.map(
        (t) =>
          `${t.taskId}${t.pinned ? " pinned" : ""}${t.active ? ` active ${t.active}` : ""}${t.releasePending ? " releasing" : ""}`,
      )
      .sort();
  const counters = () => {
    const s = e.stats();
    return {
      puts: s.loraPuts,
      hits: s.loraHits,
      misses: s.loraMisses,
      evictions: s.loraEvictions,
      bytes: s.loraBytesUsed,
    };
  };

  await run(withWeights(1n));
  expect(table()).toEqual(["1"]);
  expect(counters()).toEqual({ puts: 1, hits: 0, misses: 1, evictions: 0, bytes: ADAPTER_BYTES });

  await run(idOnly(1n));
  expect(counters()).toMatchObject({ puts: 1, hits: 1, misses: 1 });

  await run(withWeights(2n));
  expect(table()).toEqual(["1", "2"]);

  // Full by count: the least recently used (1) goes.
  await run(withWeights(3n));
  expect(table()).toEqual(["2", "3"]);
  expect(counters()).toEqual({ puts: 3, hits: 1, misses: 3, evictions: 1, bytes: 2 * ADAPTER_BYTES });

  expect(await failure(idOnly(1n))).toBe(
    "LORA_NOT_CACHED: LoRA task 1 not found in cache. Please send LoRA weights with request",
  );
  expect(counters()).toMatchObject({ misses: 4 });

  e.loraPin(2n, true);
  expect(table()).toEqual(["2 pinned", "3"]);
  // Pinned stays: 3 goes although 2 is older.
  await run(withWeights(4n));
  expect(table()).toEqual(["2 pinned", "4"]);

  // Pinned bytes are capped at the capacity minus one max-size adapter: one adapter here.
  expect(() => e.loraPin(4n, true)).toThrow(/at most \d+ may be pinned/);

  // An active task is never evicted: with 2 pinned and 4 running, there is no room for 5. (The running
  // requests are long, and cancelled, so that they are still running however late this thread looks.)
  const long = e.enqueue({
    prompt: [1, 2, 3],
    maxNewTokens: LONG_NEW_TOKENS,
    temperature: 0,
    lora: idOnly(4n),
  });
  const first = await long.events[Symbol.asyncIterator]().next();
  expect(first.done).toBe(false);
  expect(table()).toEqual(["2 pinned", "4 active 1"]);
  expect(await failure(withWeights(5n))).toMatch(
    /^LORA_CACHE_FULL: LoRA cache is full: task 5 needs \d+ bytes/,
  );
  long.cancel();
  await collect(long);
  expect(table()).toEqual(["2 pinned", "4"]);
  await run(withWeights(5n));
  expect(table()).toEqual(["2 pinned", "5"]);

  // No overwrite: other weights sent under a cached id are ignored; the id keeps its content.
  const before = e.forwardLogits([1, 2, 3], { taskId: 2n });
  await run({ ...withWeights(99n), taskId: 2n });
  expect(e.forwardLogits([1, 2, 3], { taskId: 2n })).toEqual(before);
  expect(table()).toEqual(["2 pinned", "5"]);

  // Release: at once when idle; when active, as soon as its last request ends.
  e.loraRelease(5n);
  expect(table()).toEqual(["2 pinned"]);
  const busy = e.enqueue({
    prompt: [1, 2, 3],
    maxNewTokens: LONG_NEW_TOKENS,
    temperature: 0,
    lora: idOnly(2n),
  });
  await busy.events[Symbol.asyncIterator]().next();
  e.loraRelease(2n);
  expect(table()).toEqual(["2 active 1 releasing"]);
  busy.cancel();
  await collect(busy);
  expect(table()).toEqual([]);
  expect(counters()).toMatchObject({ bytes: 0 });
  expect(() => e.loraRelease(2n)).toThrow(/LoRA task 2 is not cached/);
});

test("capacity in bytes evicts as many least recently used adapters as a put needs", async () => {
  const model = writeLlamaCheckpoint(join(work, "model-bytes"), { ...DIMS, vocab: 64, seed: 3 });
  const e = openEngine(model.dir, { maxLoraRank: 4, loraCacheBytes: 3 * ADAPTER_BYTES });
  try {
    const small = async (id: bigint) =>
      loraFromPeft(
        writePeftAdapter(join(work, `s-${id}`), { dims: DIMS, rank: 2, alpha: 4, seed: Number(id) }).dir,
        work,
        id,
        "F32",
      );
    for (const id of [11n, 12n, 13n])
      await collect(e.enqueue({ prompt: [1], maxNewTokens: 1, lora: await small(id) }));
    expect(
      e
        .stats()
        .tasks.map((t) => t.taskId)
        .sort(),
    ).toEqual([11n, 12n, 13n]);
    // Rank 4: twice the bytes, so the two least recently used go.
    const big = writePeftAdapter(join(work, "big"), { dims: DIMS, rank: 4, alpha: 8, seed: 9 });
    await collect(
      e.enqueue({ prompt: [1], maxNewTokens: 1, lora: await loraFromPeft(big.dir, work, 14n, "F32") }),
    );
    expect(
      e
        .stats()
        .tasks.map((t) => t.taskId)
        .sort(),
    ).toEqual([13n, 14n]);
    expect(e.stats()).toMatchObject({ loraEvictions: 2, loraBytesUsed: 3 * ADAPTER_BYTES });
  } finally {
    await e.close();
  }
});
