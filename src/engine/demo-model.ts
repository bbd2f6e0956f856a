/**
 * The demo model: a random-weight Llama checkpoint with a byte-level BPE tokenizer and a ChatML template,
 * plus two LoRA adapters in TensorRT-LLM's format under `lora/`. Same seed, same bytes. It is what
 * `multilora serve` runs without a model folder, and what many tests run.
 *
 *   <dir>/config.json, model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json
 *   <dir>/lora/demo-attention.safetensors   rank 8 on q_proj and v_proj
 *   <dir>/lora/demo-all.safetensors         rank 4 on all seven projections
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { castFloats, type FloatDType, floatDTypeName } from "../formats/dtypes.ts";
import { MODULE_IDS, type ModuleName, moduleShape } from "../formats/lora-modules.ts";
import { writeSafetensors } from "../formats/safetensors-writer.ts";
import { VERSION } from "../version.ts";
import { buildDemoTokenizer, demoGenerationConfig, demoTokenizerConfig } from "./demo-tokenizer.ts";
import { type LlamaSpec, rng, writeLlamaCheckpoint } from "./random-checkpoint.ts";

export const DEMO_PRESETS = {
  /** ~0.5 M parameters: instant everywhere, what tests use. */
  tiny: { hidden: 64, intermediate: 192, layers: 4, heads: 4, kvHeads: 2, headDim: 16, vocab: 512 },
  /** ~14 M parameters: closer to a real model's shapes. */
  small: { hidden: 256, intermediate: 768, layers: 8, heads: 8, kvHeads: 4, headDim: 32, vocab: 2048 },
} as const satisfies Record<string, Omit<LlamaSpec, "seed" | "dtype">>;

export type DemoPreset = keyof typeof DEMO_PRESETS;

export interface DemoAdapterSpec {
  name: string;
  modules: readonly ModuleName[];
  rank: number;
}

export const DEMO_ADAPTERS: readonly DemoAdapterSpec[] = [
  { name: "demo-attention", modules: ["attn_q", "attn_v"], rank: 8 },
  {
    name: "demo-all",
    modules: ["attn_q", "attn_k", "attn_v", "attn_dense", "mlp_h_to_4h", "mlp_gate", "mlp_4h_to_h"],
    rank: 4,
  },
];

export interface DemoModel {
  dir: string;
  loraDir: string;
  preset: DemoPreset;
  dtype: FloatDType;
  adapters: string[];
}

/** Writes the demo model into `dir` (created if needed). */
export function writeDemoModel(dir: string, options: { preset?: DemoPreset; seed?: number } = {}): DemoModel {
  const preset = options.preset ?? "tiny";
  const seed = options.seed ?? 1;
  const dims = DEMO_PRESETS[preset];
  const dtype: FloatDType = "BF16";
  mkdirSync(dir, { recursive: true });
  writeLlamaCheckpoint(dir, { ...dims, dtype, seed, tied: true, maxPosition: 4096 });
  const json = (name: string, value: unknown) =>
    writeFileSync(join(dir, name), `${JSON.stringify(value, null, 2)}\n`);
  json("tokenizer.json", buildDemoTokenizer({ vocabSize: dims.vocab }));
  json("tokenizer_config.json", demoTokenizerConfig());
  json("generation_config.json", demoGenerationConfig(dims.vocab));

  const loraDir = join(dir, "lora");
  mkdirSync(loraDir, { recursive: true });
  DEMO_ADAPTERS.forEach((spec, i) => {
    writeDemoAdapter(join(loraDir, `${spec.name}.safetensors`), spec, dims, dtype, seed * 1000 + i);
  });
  return { dir, loraDir, preset, dtype, adapters: DEMO_ADAPTERS.map((a) => a.name) };
}

/** A random adapter written directly in TensorRT-LLM's format: rows of A [r, in] then B [out, r]. */
function writeDemoAdapter(
  path: string,
  spec: DemoAdapterSpec,
  dims: (typeof DEMO_PRESETS)[DemoPreset],
  dtype: FloatDType,
  seed: number,
): void {
  const random = rng(seed);
  const uniform = () => random() * 2 - 1;
  const rows: { module: ModuleName; layer: number; values: Float32Array }[] = [];
  for (let layer = 0; layer < dims.layers; layer++) {
    for (const module of spec.modules) {
      const shape = moduleShape(module, dims);
      if (!shape) throw new Error(`demo adapter module ${module} has no shape`);
      const values = new Float32Array(spec.rank * (shape.in + shape.out));
      const aCount = spec.rank * shape.in;
      // A ~ U(-1, 1) / sqrt(in), B ~ U(-1, 1) / sqrt(r): B A is as large as the base weights.
      for (let i = 0; i < values.length; i++) {
        values[i] = uniform() / Math.sqrt(i < aCount ? shape.in : spec.rank);
      }
      rows.push({ module, layer, values });
    }
  }
  const rowLength = Math.max(...rows.map((r) => r.values.length));
  const padded = new Float32Array(rows.length * rowLength);
  rows.forEach((r, i) => {
    padded.set(r.values, i * rowLength);
  });
  const size = dtype === "F32" ? 4 : 2;
  const weights = new Uint8Array(padded.length * size);
  castFloats({ dtype: "F32", data: padded }, 0, padded.length, 1, dtype, weights);
  const config = new Int32Array(rows.flatMap((r) => [MODULE_IDS[r.module], r.layer, spec.rank]));
  writeSafetensors(
    path,
    [
      { name: "weights", dtype, shape: [rows.length, rowLength], data: weights },
      { name: "config", dtype: "I32", shape: [rows.length, 3], data: config },
    ],
    {
      format: "trtllm-lora",
      source: spec.name,
      base_model_name_or_path: "multilora/demo",
      r: String(spec.rank),
      lora_alpha: String(spec.rank),
      dtype: floatDTypeName(dtype),
      converter: `multilora ${VERSION}`,
    },
  );
}
