/**
 * Writes random-weight Hugging Face Llama-family checkpoints (config.json + model.safetensors),
 * deterministic for a seed, and returns the values as stored (already rounded to the stored dtype, decoded
 * to f32). The demo model is one; tests run their float64 reference forward pass on exactly what an engine
 * reads.
 *
 * Tensor names and shapes follow transformers' LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM
 * (Linear weights are [out, in], row-major), written out here independently of the engine's loader.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type FloatDType, roundToDType } from "../formats/dtypes.ts";
import { type TensorData, writeSafetensors } from "../formats/safetensors-writer.ts";

export type LlamaArchitecture = "LlamaForCausalLM" | "Qwen2ForCausalLM" | "MistralForCausalLM";

export interface Llama3RopeScaling {
  factor: number;
  low_freq_factor: number;
  high_freq_factor: number;
  original_max_position_embeddings: number;
}

export interface LlamaSpec {
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  /** Stored dtype (default F32). */
  dtype?: FloatDType;
  /** Share lm_head with embed_tokens (no lm_head tensor; `tie_word_embeddings: true`). */
  tied?: boolean;
  /** Qwen2 style: q_proj/k_proj/v_proj carry a `.bias`. Default: true for Qwen2ForCausalLM, else false. */
  qkvBias?: boolean;
  /** Default 10000. */
  ropeTheta?: number;
  /** Written as `rope_scaling` with `rope_type: "llama3"`. */
  ropeScaling?: Llama3RopeScaling;
  /** Default 1e-5. */
  rmsEps?: number;
  /** Default 1. */
  seed?: number;
  /** Default: Qwen2ForCausalLM when qkvBias is set, else LlamaForCausalLM. */
  architecture?: LlamaArchitecture;
  /** max_position_embeddings (default 2048). */
  maxPosition?: number;
}

/** The config.json this helper writes (the keys the reference forward pass reads, plus the usual others). */
export interface HfLlamaConfig {
  architectures: LlamaArchitecture[];
  model_type: "llama" | "qwen2" | "mistral";
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  vocab_size: number;
  rms_norm_eps: number;
  rope_theta: number;
  rope_scaling: (Llama3RopeScaling & { rope_type: "llama3" }) | null;
  tie_word_embeddings: boolean;
  max_position_embeddings: number;
  torch_dtype: "float32" | "float16" | "bfloat16";
  bos_token_id: number;
  eos_token_id: number;
  hidden_act: "silu";
  [key: string]: unknown;
}

/** What the reference forward pass needs: the config and every tensor's values by HF name. */
export interface LlamaModel {
  config: HfLlamaConfig;
  weights: ReadonlyMap<string, Float32Array | Float64Array>;
}

export interface LlamaCheckpoint extends LlamaModel {
  dir: string;
  dtype: FloatDType;
  /** Each tensor's values as stored (rounded to `dtype`, decoded to f32), in file order. */
  weights: Map<string, Float32Array>;
  shapes: Map<string, number[]>;
}

const MODEL_TYPE = {
  LlamaForCausalLM: "llama",
  Qwen2ForCausalLM: "qwen2",
  MistralForCausalLM: "mistral",
} as const;

const TORCH_DTYPE = { F32: "float32", F16: "float16", BF16: "bfloat16" } as const;

/** The config.json for `spec`. */
export function llamaConfig(spec: LlamaSpec): HfLlamaConfig {
  const architecture = spec.architecture ?? (spec.qkvBias ? "Qwen2ForCausalLM" : "LlamaForCausalLM");
  const config: HfLlamaConfig = {
    architectures: [architecture],
    model_type: MODEL_TYPE[architecture],
    hidden_size: spec.hidden,
    intermediate_size: spec.intermediate,
    num_hidden_layers: spec.layers,
    num_attention_heads: spec.heads,
    num_key_value_heads: spec.kvHeads,
    head_dim: spec.headDim,
    vocab_size: spec.vocab,
    rms_norm_eps: spec.rmsEps ?? 1e-5,
    rope_theta: spec.ropeTheta ?? 10000,
    rope_scaling: spec.ropeScaling ? { ...spec.ropeScaling, rope_type: "llama3" } : null,
    tie_word_embeddings: spec.tied ?? false,
    max_position_embeddings: spec.maxPosition ?? 2048,
    torch_dtype: TORCH_DTYPE[spec.dtype ?? "F32"],
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: "silu",
  };
  // No sliding window anywhere: the reference attends to every earlier position.
  if (architecture === "MistralForCausalLM") config.sliding_window = null;
  if (architecture === "Qwen2ForCausalLM") config.use_sliding_window = false;
  return config;
}

/** Whether q/k/v carry a bias under `spec` (Qwen2 by default). */
export function hasQkvBias(spec: LlamaSpec): boolean {
  return spec.qkvBias ?? spec.architecture === "Qwen2ForCausalLM";
}

/** Every tensor's HF name and shape, in the order this helper writes them. */
export function llamaTensorShapes(config: HfLlamaConfig, qkvBias: boolean): Map<string, number[]> {
  const H = config.hidden_size;
  const I = config.intermediate_size;
  const q = config.num_attention_heads * config.head_dim;
  const kv = config.num_key_value_heads * config.head_dim;
  const shapes = new Map<string, number[]>();
  shapes.set("model.embed_tokens.weight", [config.vocab_size, H]);
  for (let i = 0; i < config.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    shapes.set(`${p}.input_layernorm.weight`, [H]);
    for (const [module, out] of [
      ["q_proj", q],
      ["k_proj", kv],
      ["v_proj", kv],
    ] as const) {
      shapes.set(`${p}.self_attn.${module}.weight`, [out, H]);
      if (qkvBias) shapes.set(`${p}.self_attn.${module}.bias`, [out]);
    }
    shapes.set(`${p}.self_attn.o_proj.weight`, [H, q]);
    shapes.set(`${p}.post_attention_layernorm.weight`, [H]);
    shapes.set(`${p}.mlp.gate_proj.weight`, [I, H]);
    shapes.set(`${p}.mlp.up_proj.weight`, [I, H]);
    shapes.set(`${p}.mlp.down_proj.weight`, [H, I]);
  }
  shapes.set("model.norm.weight", [H]);
  if (!config.tie_word_embeddings) shapes.set("lm_head.weight", [config.vocab_size, H]);
  return shapes;
}

/** Writes a checkpoint with deterministic random weights. */
export function writeLlamaCheckpoint(dir: string, spec: LlamaSpec): LlamaCheckpoint {
  const config = llamaConfig(spec);
  const shapes = llamaTensorShapes(config, hasQkvBias(spec));
  const random = rng(spec.seed ?? 1);
  const uniform = () => random() * 2 - 1;
  const weights = new Map<string, Float32Array>();
  for (const [name, shape] of shapes) {
    const v = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name === "model.embed_tokens.weight") {
      for (let i = 0; i < v.length; i++) v[i] = uniform() * 0.5;
    } else if (name.endsWith("norm.weight")) {
      for (let i = 0; i < v.length; i++) v[i] = 1 + uniform() * 0.1;
    } else if (name.endsWith(".bias")) {
      for (let i = 0; i < v.length; i++) v[i] = uniform() * 0.1;
    } else {
      const scale = 1 / Math.sqrt(shape[1] as number); // fan_in
      for (let i = 0; i < v.length; i++) v[i] = uniform() * scale;
    }
    weights.set(name, v);
  }
  return saveLlamaCheckpoint(dir, config, weights, spec.dtype ?? "F32");
}

/**
 * Writes `config` and `weights` (HF names, f32 values) to `dir` as config.json + model.safetensors in
 * `dtype`. The weights must be exactly the tensors `llamaTensorShapes` lists (bias presence is read from
 * the map). Returns the values as stored.
 */
export function saveLlamaCheckpoint(
  dir: string,
  config: HfLlamaConfig,
  weights: ReadonlyMap<string, Float32Array>,
  dtype: FloatDType,
): LlamaCheckpoint {
  const qkvBias = weights.has("model.layers.0.self_attn.q_proj.bias");
  const shapes = llamaTensorShapes(config, qkvBias);
  const extra = [...weights.keys()].filter((name) => !shapes.has(name));
  if (extra.length > 0) throw new Error(`unexpected tensors: ${extra.join(", ")}`);
  const written = { ...config, torch_dtype: TORCH_DTYPE[dtype] };
  const tensors: TensorData[] = [];
  const stored = new Map<string, Float32Array>();
  for (const [name, shape] of shapes) {
    const v = weights.get(name);
    const size = shape.reduce((a, b) => a * b, 1);
    if (!v) throw new Error(`missing tensor ${name}`);
    if (v.length !== size) throw new Error(`${name}: ${v.length} values for shape [${shape.join(", ")}]`);
    const s = roundToDType(v, dtype);
    stored.set(name, s.decoded);
    tensors.push({ name, dtype, shape, data: s.data });
  }
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(written, null, 2));
  writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt" });
  return { dir, config: written, dtype, weights: stored, shapes };
}

/** mulberry32: a small deterministic PRNG giving uniform numbers in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
