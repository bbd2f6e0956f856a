/**
 * CPU engine benchmark, on a SmolLM2-360M-shaped random BF16 model (hidden 960, intermediate 2560,
 * 32 layers, 15 heads, 5 kv heads, vocab 49152, tied embeddings), every figure measured in this run:
 *
 *   (1) decode tokens/s at batch 1, as a fraction of the memory roofline: memory bandwidth (memcpy over a
 *       buffer 4x the last-level cache, on as many threads as the engine uses, counting bytes read)
 *       divided by the weight bytes one decode step reads. Target 0.5.
 *   (2) batch 16, each sequence with its own rank-16 adapter on all seven modules, against the same batch
 *       without LoRA (aggregate decode tokens/s). Target 0.85.
 *   (3) prefill tokens/s (one 512-token prompt).
 *
 *   bun bench/engine.ts [--threads N] [--tokens N]
 *
 * Last line: {"bench":"engine","roofline":F,"lora_ratio":R}
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { loadCheckpoint } from "../src/engine/checkpoint.ts";
import { CpuEngine } from "../src/engine/cpu-engine.ts";
import type { LoraRef, RequestHandle } from "../src/engine/engine.ts";
import { writeLlamaCheckpoint } from "../src/engine/random-checkpoint.ts";
import { randomAdapter, SMOLLM2_360M } from "./shapes.ts";

const { values } = parseArgs({
  options: { threads: { type: "string" }, tokens: { type: "string", default: "48" } },
});
const threads = values.threads ? Number(values.threads) : availableParallelism();
const decodeTokens = Number(values.tokens);
/** The SmolLM2-360M shape the other benchmarks use too. */
const DIMS = SMOLLM2_360M;

/** Bytes one decode step reads: every matrix (the tied embedding once, as lm_head), norms, in BF16. */
function weightBytesPerToken(): number {
  const { hidden: h, intermediate: i, layers, heads, kvHeads, headDim, vocab } = DIMS;
  const perLayer = h * heads * headDim * 2 + 2 * h * kvHeads * headDim + 3 * h * i + 2 * h;
  return (layers * perLayer + vocab * h + h) * 2;
}

/** Read bandwidth in bytes/s: `threads` workers each copy their share of a buffer 4x the LLC. */
async function memoryBandwidth(): Promise<number> {
  let llc = 32 << 20;
  try {
    const text = readFileSync("/sys/devices/system/cpu/cpu0/cache/index3/size", "utf8").trim();
    llc = Number.parseInt(text, 10) * (text.endsWith("M") ? 1 << 20 : 1024);
  } catch {}
  const bytes = Math.max(4 * llc, 256 << 20);
  const src = new SharedArrayBuffer(bytes);
  const dst = new SharedArrayBuffer(bytes);
  new Uint8Array(src).fill(1);
  new Uint8Array(dst).fill(2);
  const code = `self.onmessage = (e) => { const { src, dst, begin, end } = e.data; const s = new Uint8Array(src, begin, end - begin);
    const d = new Uint8Array(dst, begin, end - begin); d.set(s); const t = performance.now(); d.set(s); postMessage(performance.now() - t); };`;
  const url = URL.createObjectURL(new Blob([code], { type: "application/javascript" }));
  let best = 0;
  for (let round = 0; round < 3; round++) {
    const workers = Array.from({ length: threads }, () => new Worker(url));
    const share = Math.floor(bytes / threads);
    const times = await Promise.all(
      workers.map(
        (w, k) =>
          new Promise<number>((resolve) => {
            w.onmessage = (e) => resolve(e.data as number);
            w.postMessage({ src, dst, begin: k * share, end: k === threads - 1 ? bytes : (k + 1) * share });
          }),
      ),
    );
    for (const w of workers) w.terminate();
    best = Math.max(best, bytes / (Math.max(...times) / 1000));
  }
  return best;
}

/** A random adapter (rank `rank`, all seven modules, BF16) as an engine request's LoRA part. */
function adapterRef(taskId: bigint, rank: number): LoraRef {
  const a = randomAdapter(DIMS, rank, Number(taskId));
  return {
    taskId,
    weights: { bytes: a.weights, dtype: "BF16", rows: a.rows, rowLength: a.rowLength },
    config: a.config,
  };
}

/** Aggregate decode tokens/s of `handles`, counted from the first token to the last. */
async function decodeRate(handles: RequestHandle[]): Promise<number> {
  let first = 0;
  let last = 0;
  let tokens = 0;
  await Promise.all(
    handles.map(async (h) => {
      for await (const event of h.events) {
        if (event.token < 0) continue;
        const now = performance.now();
        if (first === 0) first = now;
        else tokens++;
        last = now;
      }
    }),
  );
  return tokens / ((last - first) / 1000);
}

const work = mkdtempSync(join(tmpdir(), "multilora-bench-engine-"));
try {
  let t = performance.now();
  writeLlamaCheckpoint(work, { ...DIMS, dtype: "BF16", tied: true, seed: 1, maxPosition: 8192 });
  const generateSeconds = (performance.now() - t) / 1000;
  t = performance.now();
  const checkpoint = loadCheckpoint(work);
  const engine = CpuEngine.create(checkpoint, {
    threads,
    maxBatch: 16,
    loraCacheBytes: 2 * 1024 ** 3,
    maxLoraRank: 16,
  });
  const startMs = performance.now() - t;
  const prompt = Array.from({ length: 8 }, (_, i) => 100 + i);

  // (1) batch-1 decode against the roofline
  await decodeRate([engine.enqueue({ prompt, maxNewTokens: 4, temperature: 0 })]); // warm-up
  const decode = await decodeRate([engine.enqueue({ prompt, maxNewTokens: decodeTokens, temperature: 0 })]);
  const bandwidth = await memoryBandwidth();
  const perToken = weightBytesPerToken();
  const roofline = decode / (bandwidth / perToken);

  // (2) batch 16 with 16 adapters against batch 16 without
  const adapters = Array.from({ length: 16 }, (_, i) => adapterRef(BigInt(i + 1), 16));
  await Promise.all(
    adapters.map((lora) => decodeRate([engine.enqueue({ prompt, maxNewTokens: 1, temperature: 0, lora })])),
  );
  const batch = (withLora: boolean) =>
    decodeRate(
      adapters.map((lora, i) =>
        engine.enqueue({
          prompt: prompt.map((p) => p + i),
          maxNewTokens: decodeTokens,
          temperature: 0,
          lora: withLora ? { taskId: lora.taskId } : undefined,
        }),
      ),
    );
  // Runs alternate base, LoRA, base, ..., base, and each LoRA run is compared with the mean of the base
  // runs just before and after it (which cancels a steady drift of this machine's speed, larger between
  // runs than what LoRA costs): the ratio is the median of those three comparisons.
  const bases = [await batch(false)];
  const pairs: { base: number; lora: number }[] = [];
  for (let round = 0; round < 3; round++) {
    const lora = await batch(true);
    bases.push(await batch(false));
    pairs.push({ base: ((bases[round] as number) + (bases[round + 1] as number)) / 2, lora });
  }
  pairs.sort((a, b) => a.lora / a.base - b.lora / b.base);
  const middle = pairs[1] as { base: number; lora: number };
  const baseRate = middle.base;
  const loraBatch = middle.lora;
  const loraRatio = loraBatch / baseRate; // the median pair's

  // (3) prefill
  const long = Array.from({ length: 512 }, (_, i) => (i * 7919) % DIMS.vocab);
  t = performance.now();
  for await (const _ of engine.enqueue({ prompt: long, maxNewTokens: 1, temperature: 0 }).events) {
  }
  const prefill = long.length / ((performance.now() - t) / 1000);
  await engine.close();

  console.log(
    `SmolLM2-360M-shaped random BF16 model, ${(checkpoint.bytes / 1e6).toFixed(0)} MB mapped, ${threads} threads`,
  );
  console.log("| figure | value |");
  console.log("|---|---|");
  console.log(`| model generation (not the engine) | ${generateSeconds.toFixed(1)} s |`);
  console.log(`| engine start over the mapped weights | ${startMs.toFixed(0)} ms |`);
  console.log(`| memory bandwidth (memcpy, bytes read) | ${(bandwidth / 1e9).toFixed(2)} GB/s |`);
  console.log(`| weight bytes read per decode step | ${(perToken / 1e6).toFixed(0)} MB |`);
  console.log(`| roofline decode | ${(bandwidth / perToken).toFixed(2)} tokens/s |`);
  console.log(`| decode, batch 1 | ${decode.toFixed(2)} tokens/s (${roofline.toFixed(2)} of roofline) |`);
  console.log(`| decode, batch 16, no LoRA | ${baseRate.toFixed(2)} tokens/s |`);
  console.log(
    `| decode, batch 16, 16 adapters rank 16 x 7 modules | ${loraBatch.toFixed(2)} tokens/s (${loraRatio.toFixed(2)}) |`,
  );
  console.log(`| prefill, 512 tokens | ${prefill.toFixed(1)} tokens/s |`);
  console.log(
    JSON.stringify({
      bench: "engine",
      roofline: Number(roofline.toFixed(3)),
      lora_ratio: Number(loraRatio.toFixed(3)),
    }),
  );
} finally {
  rmSync(work, { recursive: true, force: true });
}
