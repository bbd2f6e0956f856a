/**
 * Writes synthetic Hugging Face PEFT adapters (adapter_config.json + adapter_model.safetensors) with
 * deterministic random weights, and returns the stored values so tests can compute expectations themselves.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { rng } from "../../src/engine/random-checkpoint.ts";
import { type FloatDType, roundToDType } from "../../src/formats/dtypes.ts";
import type { ModelDims } from "../../src/formats/model-config.ts";
import { type TensorData, writeSafetensors } from "../../src/formats/safetensors-writer.ts";

export { rng };

export type HfModule =
  | "q_proj"
  | "k_proj"
  | "v_proj"
  | "o_proj"
  | "gate_proj"
  | "up_proj"
  | "down_proj"
  | "qkv_proj"
  | "gate_up_proj";

export const ALL_SEVEN: HfModule[] = [
  "q_proj",
  "k_proj",
  "v_proj",
  "o_proj",
  "gate_proj",
  "up_proj",
  "down_proj",
];

export const SMALL_GQA: ModelDims = {
  hidden: 64,
  intermediate: 96,
  layers: 3,
  heads: 4,
  kvHeads: 2,
  headDim: 16,
};

/** The input and output widths of a Hugging Face Llama module, written out here independently of src/. */
export function hfShape(module: HfModule, d: ModelDims): [number, number] {
  const q = d.heads * d.headDim;
  const kv = d.kvHeads * d.headDim;
  const widths: Record<HfModule, [number, number]> = {
    q_proj: [d.hidden, q],
    k_proj: [d.hidden, kv],
    v_proj: [d.hidden, kv],
    o_proj: [q, d.hidden],
    gate_proj: [d.hidden, d.intermediate],
    up_proj: [d.hidden, d.intermediate],
    down_proj: [d.intermediate, d.hidden],
    qkv_proj: [d.hidden, q + 2 * kv],
    gate_up_proj: [d.hidden, 2 * d.intermediate],
  };
  return widths[module];
}

const MLP_MODULES: readonly HfModule[] = ["gate_proj", "up_proj", "down_proj", "gate_up_proj"];

/** The module's name inside the model, as PEFT matches rank_pattern keys against it. */
export function modulePath(layer: number, module: HfModule): string {
  return `model.layers.${layer}.${MLP_MODULES.includes(module) ? "mlp" : "self_attn"}.${module}`;
}

export interface PeftSpec {
  dims?: ModelDims;
  modules?: HfModule[];
  layers?: number[];
  rank?: number;
  /** Per-module rank, e.g. from a rank_pattern the test also writes into `config`. */
  rankFor?: (path: string) => number;
  alpha?: number;
  dtype?: FloatDType;
  seed?: number;
  /** Keys merged into adapter_config.json (null deletes a key). */
  config?: Record<string, unknown>;
  /** Extra tensors written beside the LoRA ones. */
  extraTensors?: TensorData[];
  /** Changes a tensor's values after generation (e.g. to plant a NaN). */
  edit?: (name: string, values: Float32Array) => void;
}

export interface WrittenAdapter {
  dir: string;
  /** Each lora tensor's values as stored (already rounded to the stored dtype), by tensor name. */
  values: Map<string, Float32Array>;
  shapes: Map<string, [number, number]>;
}

export function writePeftAdapter(dir: string, spec: PeftSpec = {}): WrittenAdapter {
  const dims = spec.dims ?? SMALL_GQA;
  const modules = spec.modules ?? ["q_proj", "v_proj"];
  const layers = spec.layers ?? [...Array(dims.layers).keys()];
  const dtype = spec.dtype ?? "F32";
  const random = rng(spec.seed ?? 1);
  const tensors: TensorData[] = [];
  const values = new Map<string, Float32Array>();
  const shapes = new Map<string, [number, number]>();
  for (const layer of layers) {
    for (const module of modules) {
      const path = modulePath(layer, module);
      const r = spec.rankFor?.(path) ?? spec.rank ?? 4;
      const [inDim, outDim] = hfShape(module, dims);
      for (const [side, shape] of [
        ["A", [r, inDim]],
        ["B", [outDim, r]],
      ] as const) {
        const name = `base_model.model.${path}.lora_${side}.weight`;
        const v = new Float32Array(shape[0] * shape[1]);
        for (let i = 0; i < v.length; i++) v[i] = (random() - 0.5) * (side === "A" ? 0.2 : 0.05);
        spec.edit?.(name, v);
        const stored = roundToDType(v, dtype);
        values.set(name, stored.decoded);
        shapes.set(name, [shape[0], shape[1]]);
        tensors.push({ name, dtype, shape: [shape[0], shape[1]], data: stored.data });
      }
    }
  }
  tensors.push(...(spec.extraTensors ?? []));
  const config: Record<string, unknown> = {
    base_model_name_or_path: "test/tiny-llama",
    bias: "none",
    fan_in_fan_out: false,
    lora_alpha: spec.alpha ?? 8,
    lora_dropout: 0.0,
    modules_to_save: null,
    peft_type: "LORA",
    r: spec.rank ?? 4,
    target_modules: modules,
    task_type: "CAUSAL_LM",
    use_dora: false,
    use_rslora: false,
  };
  for (const [k, v] of Object.entries(spec.config ?? {})) {
    if (v === null) delete config[k];
    else config[k] = v;
  }
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "adapter_config.json"), JSON.stringify(config, null, 2));
  writeSafetensors(join(dir, "adapter_model.safetensors"), tensors, { format: "pt" });
  return { dir, values, shapes };
}

/** A Hugging Face config.json for `dims`, written to `<dir>/config.json`. */
export function writeHfConfig(dir: string, dims: ModelDims, extra: Record<string, unknown> = {}): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, "config.json"),
    JSON.stringify({
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      hidden_size: dims.hidden,
      intermediate_size: dims.intermediate,
      num_hidden_layers: dims.layers,
      num_attention_heads: dims.heads,
      num_key_value_heads: dims.kvHeads,
      head_dim: dims.headDim,
      ...extra,
    }),
  );
  return dir;
}

/** A TensorRT-LLM engine config.json (as trtllm-build writes it) for `dims`. */
export function writeEngineConfig(
  dir: string,
  dims: ModelDims,
  lora: { dtype?: string; maxLoraRank?: number; targetModules?: string[]; plugin?: string | null } = {},
): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, "config.json"),
    JSON.stringify({
      version: "0.17.0",
      pretrained_config: {
        architecture: "LlamaForCausalLM",
        dtype: lora.dtype ?? "bfloat16",
        hidden_size: dims.hidden,
        intermediate_size: dims.intermediate,
        num_hidden_layers: dims.layers,
        num_attention_heads: dims.heads,
        num_key_value_heads: dims.kvHeads,
        head_size: dims.headDim,
        vocab_size: 1000,
        mapping: { world_size: 1, tp_size: 1, pp_size: 1 },
      },
      build_config: {
        max_batch_size: 8,
        max_seq_len: 2048,
        plugin_config: { lora_plugin: lora.plugin === undefined ? "auto" : lora.plugin },
        lora_config: {
          max_lora_rank: lora.maxLoraRank ?? 64,
          lora_target_modules: lora.targetModules ?? [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_dense",
            "mlp_h_to_4h",
            "mlp_4h_to_h",
            "mlp_gate",
          ],
        },
      },
    }),
  );
  return dir;
}
