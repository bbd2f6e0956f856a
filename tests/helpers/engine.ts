/** Helpers for tests that run the real CPU engine. */
import { afterAll } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadCheckpoint } from "../../src/engine/checkpoint.ts";
import { CpuEngine, type CpuEngineOptions } from "../../src/engine/cpu-engine.ts";
import type { LoraRef, RequestHandle, TokenEvent } from "../../src/engine/engine.ts";
import { type LlamaSpec, writeLlamaCheckpoint } from "../../src/engine/random-checkpoint.ts";
import type { FloatDType } from "../../src/formats/dtypes.ts";
import { convertPeftAdapter } from "../../src/lora/convert.ts";
import { readPeftAdapter } from "../../src/lora/peft-adapter.ts";
import { readTrtllmLora } from "../../src/lora/trtllm-adapter.ts";
import type { WrittenAdapter } from "./peft.ts";
import type { LoraModule, LoraWeights } from "./reference-llama.ts";

/** The shape of the small random Llama the engine tests run (GQA: 4 heads over 2 KV heads). */
export const TINY_DIMS = { hidden: 64, intermediate: 96, layers: 2, heads: 4, kvHeads: 2, headDim: 16 };

/** A small random Llama's spec for writeLlamaCheckpoint: TINY_DIMS, `vocab` tokens, weights from `seed`. */
export function tinySpec(seed: number, vocab = 64) {
  return { ...TINY_DIMS, vocab, seed };
}

/**
 * Positions for a request that must still be running however late a test looks at it: the engine decodes
 * from enqueue on, while the first event waits for the response pump's worker to start (tens of
 * milliseconds on a loaded machine, in which the tiny model makes hundreds of tokens). Such a test writes
 * its model with `maxPosition: LONG_POSITIONS`, opens the engine with `maxSeqLen: LONG_POSITIONS`, asks
 * for LONG_NEW_TOKENS (seconds of decoding) and ends the request with cancel.
 */
export const LONG_POSITIONS = 32768;
export const LONG_NEW_TOKENS = LONG_POSITIONS - 64;

/** Two threads at most: CI machines have two cores. */
export function openEngine(dir: string, options: CpuEngineOptions = {}): CpuEngine {
  return CpuEngine.create(loadCheckpoint(dir), { threads: 2, ...options });
}

/**
 * A test file's random model in a temp folder, and `open` for engines over it; after the file's tests
 * every engine opened is closed and the folder removed.
 */
export function engineTestModel(name: string, spec: LlamaSpec) {
  const work = mkdtempSync(join(tmpdir(), `multilora-${name}-`));
  const model = writeLlamaCheckpoint(join(work, "model"), spec);
  const engines: CpuEngine[] = [];
  afterAll(async () => {
    for (const e of engines) await e.close();
    rmSync(work, { recursive: true, force: true });
  });
  const open = (options: CpuEngineOptions = {}) => {
    const e = openEngine(model.dir, options);
    engines.push(e);
    return e;
  };
  return { work, model, open };
}

export interface Collected {
  tokens: number[];
  events: TokenEvent[];
  finishReason: string | null;
}

/** Reads a request's events to the end. */
export async function collect(handle: RequestHandle): Promise<Collected> {
  const events: TokenEvent[] = [];
  for await (const e of handle.events) events.push(e);
  const last = events.at(-1);
  return {
    tokens: events.filter((e) => e.token >= 0).map((e) => e.token),
    events,
    finishReason: last?.finishReason ?? null,
  };
}

/** A TensorRT-LLM LoRA file as the LoraRef an engine request carries. */
export function loraFromFile(path: string, taskId: bigint, scale?: number): LoraRef {
  return readTrtllmLora(path, taskId, scale).lora;
}

/** Converts a PEFT adapter folder with the real converter and returns it as a LoraRef. */
export async function loraFromPeft(
  peftDir: string,
  work: string,
  taskId: bigint,
  dtype: FloatDType,
  scale?: number,
): Promise<LoraRef> {
  const output = join(work, `${taskId}-${dtype}.safetensors`);
  await convertPeftAdapter(readPeftAdapter(peftDir), { output, dtype });
  return loraFromFile(output, taskId, scale);
}

/** The PEFT tensors of an adapter as reference deltas (A, B and alpha/r times `scale`). */
export function peftDeltas(written: WrittenAdapter, alphaOverR: number, scale = 1): LoraWeights {
  const deltas = new Map<string, { a: Float32Array; b: Float32Array; scale: number }>();
  for (const [name, values] of written.values) {
    const m = /layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_A\.weight$/.exec(name);
    if (!m) continue;
    const b = written.values.get(name.replace("lora_A", "lora_B")) as Float32Array;
    deltas.set(`${m[1]}/${m[2] as LoraModule}`, { a: values, b, scale: alphaOverR * scale });
  }
  return deltas;
}

/** Largest |a - b| over the largest |b|. */
export function relativeError(got: ArrayLike<number>[], want: ArrayLike<number>[]): number {
  let diff = 0;
  let scale = 0;
  for (let t = 0; t < want.length; t++) {
    const g = got[t] as ArrayLike<number>;
    const w = want[t] as ArrayLike<number>;
    for (let i = 0; i < w.length; i++) {
      diff = Math.max(diff, Math.abs((g[i] as number) - (w[i] as number)));
      scale = Math.max(scale, Math.abs(w[i] as number));
    }
  }
  return diff / scale;
}
