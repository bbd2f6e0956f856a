/** Shared by the benchmarks: a SmolLM2-360M-shaped random model, and random adapters in TensorRT-LLM's format. */

import { closeSync, fsyncSync, openSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildDemoTokenizer, demoTokenizerConfig } from "../src/engine/demo-tokenizer.ts";
import type { RequestHandle } from "../src/engine/engine.ts";
import { rng, writeLlamaCheckpoint } from "../src/engine/random-checkpoint.ts";
import { castFloats } from "../src/formats/dtypes.ts";
import { MODULE_IDS, type ModuleName, moduleShape } from "../src/formats/lora-modules.ts";
import { writeSafetensors } from "../src/formats/safetensors-writer.ts";

/**
 * Writes the files under `dir` out to disk and waits: a model just written leaves hundreds of MB of dirty
 * pages, whose writeback would otherwise take memory bandwidth and CPU from the first figures measured.
 */
export function flushToDisk(dir: string): void {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) {
      flushToDisk(path);
      continue;
    }
    const fd = openSync(path, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }
}

/** hidden 960, intermediate 2560, 32 layers, 15 heads, 5 kv heads, vocab 49152, tied embeddings. */
export const SMOLLM2_360M = {
  hidden: 960,
  intermediate: 2560,
  layers: 32,
  heads: 15,
  kvHeads: 5,
  headDim: 64,
  vocab: 49152,
};

export const SEVEN: ModuleName[] = [
  "attn_q",
  "attn_k",
  "attn_v",
  "attn_dense",
  "mlp_h_to_4h",
  "mlp_gate",
  "mlp_4h_to_h",
];

/** A servable SmolLM2-360M-shaped BF16 checkpoint (random weights, a demo tokenizer of the full vocab). */
export function writeSmolShapedModel(dir: string): void {
  writeLlamaCheckpoint(dir, { ...SMOLLM2_360M, dtype: "BF16", tied: true, seed: 1, maxPosition: 8192 });
  writeFileSync(
    join(dir, "tokenizer.json"),
    JSON.stringify(buildDemoTokenizer({ vocabSize: SMOLLM2_360M.vocab })),
  );
  writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify(demoTokenizerConfig()));
}

/** The dimensions a LoRA adapter's shapes depend on. */
export interface AdapterDims {
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

/** A random rank-`rank` adapter on all seven modules of `dims`, in TensorRT-LLM's layout (BF16). */
export function randomAdapter(dims: AdapterDims, rank: number, seed: number) {
  const random = rng(seed);
  const rows: { module: ModuleName; layer: number; length: number }[] = [];
  for (let layer = 0; layer < dims.layers; layer++) {
    for (const module of SEVEN) {
      const s = moduleShape(module, dims);
      if (s) rows.push({ module, layer, length: rank * (s.in + s.out) });
    }
  }
  const rowLength = Math.max(...rows.map((r) => r.length));
  const values = new Float32Array(rows.length * rowLength);
  rows.forEach((r, i) => {
    for (let k = 0; k < r.length; k++) values[i * rowLength + k] = (random() - 0.5) * 0.02;
  });
  const weights = new Uint8Array(values.length * 2);
  castFloats({ dtype: "F32", data: values }, 0, values.length, 1, "BF16", weights);
  const config = new Int32Array(rows.flatMap((r) => [MODULE_IDS[r.module], r.layer, rank]));
  return { weights, rows: rows.length, rowLength, config };
}

/** Writes `randomAdapter` as a TensorRT-LLM LoRA file; returns the weights' bytes. */
export function writeRandomAdapter(path: string, dims: AdapterDims, rank: number, seed: number): number {
  const a = randomAdapter(dims, rank, seed);
  writeSafetensors(path, [
    { name: "weights", dtype: "BF16", shape: [a.rows, a.rowLength], data: a.weights },
    { name: "config", dtype: "I32", shape: [a.rows, 3], data: a.config },
  ]);
  return a.weights.length;
}

export function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
}

/** Aggregate decode tokens/s of `handles`, counted from the first token to the last. */
export async function decodeRate(handles: RequestHandle[]): Promise<number> {
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
