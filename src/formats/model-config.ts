/**
 * The `config.json` of a base model: a Hugging Face checkpoint's, or a TensorRT-LLM engine's (written by
 * `trtllm-build`: `pretrained_config` + `build_config`). Both give the dimensions LoRA shapes depend on;
 * an engine also gives its dtype and its LoRA limits.
 */
import { statSync } from "node:fs";
import { join } from "node:path";
import * as v from "valibot";
import { type FloatDType, parseFloatDType } from "./dtypes.ts";
import { parseWith, readJson } from "./json-file.ts";

/** The dimensions of a Llama-family model that LoRA shapes depend on. */
export interface ModelDims {
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

const Count = v.pipe(v.number(), v.integer(), v.minValue(1));

const TokenIds = v.nullish(
  v.union([v.pipe(v.number(), v.integer()), v.array(v.pipe(v.number(), v.integer()))]),
);

/** Hugging Face `config.json` of a Llama-family model (unknown keys ignored; defaults as transformers'). */
export const HfModelConfigSchema = v.looseObject({
  model_type: v.optional(v.string()),
  architectures: v.optional(v.array(v.string())),
  hidden_size: Count,
  intermediate_size: Count,
  num_hidden_layers: Count,
  num_attention_heads: Count,
  num_key_value_heads: v.nullish(Count),
  head_dim: v.nullish(Count),
  torch_dtype: v.nullish(v.string()),
  vocab_size: v.optional(Count),
  max_position_embeddings: v.optional(Count),
  rms_norm_eps: v.optional(v.pipe(v.number(), v.minValue(0)), 1e-6),
  rope_theta: v.optional(v.pipe(v.number(), v.minValue(0)), 10000),
  rope_scaling: v.nullish(
    v.looseObject({
      rope_type: v.optional(v.string()),
      type: v.optional(v.string()),
      factor: v.optional(v.number()),
      low_freq_factor: v.optional(v.number()),
      high_freq_factor: v.optional(v.number()),
      original_max_position_embeddings: v.optional(v.number()),
    }),
  ),
  tie_word_embeddings: v.optional(v.boolean()),
  attention_bias: v.optional(v.boolean()),
  mlp_bias: v.optional(v.boolean()),
  hidden_act: v.optional(v.string()),
  sliding_window: v.nullish(v.number()),
  use_sliding_window: v.optional(v.boolean()),
  bos_token_id: TokenIds,
  eos_token_id: TokenIds,
  _name_or_path: v.optional(v.string()),
});

export type HfModelConfig = v.InferOutput<typeof HfModelConfigSchema>;

/** TensorRT-LLM engine `config.json` (the parts LoRA needs). */
export const TrtllmEngineConfigSchema = v.looseObject({
  version: v.optional(v.string()),
  pretrained_config: v.looseObject({
    architecture: v.optional(v.string()),
    dtype: v.string(),
    hidden_size: Count,
    intermediate_size: Count,
    num_hidden_layers: Count,
    num_attention_heads: Count,
    num_key_value_heads: v.nullish(Count),
    head_size: v.nullish(Count),
    head_dim: v.nullish(Count),
    vocab_size: v.optional(Count),
    mapping: v.optional(
      v.looseObject({
        world_size: v.optional(Count),
        tp_size: v.optional(Count),
        pp_size: v.optional(Count),
      }),
    ),
  }),
  build_config: v.looseObject({
    max_batch_size: v.optional(Count),
    max_seq_len: v.optional(Count),
    max_num_tokens: v.optional(Count),
    gather_generation_logits: v.optional(v.boolean()),
    plugin_config: v.optional(v.looseObject({ lora_plugin: v.nullish(v.union([v.string(), v.boolean()])) })),
    lora_config: v.optional(
      v.looseObject({
        max_lora_rank: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0))),
        lora_target_modules: v.optional(v.array(v.string())),
      }),
    ),
  }),
});

/** What a TensorRT-LLM engine imposes on adapters. */
export interface EngineLoraLimits {
  /** The engine's dtype: adapter weights must match it. */
  dtype: FloatDType | undefined;
  /** The raw dtype name from the config, for messages. */
  dtypeName: string;
  /** Whether the engine was built with the LoRA plugin at all. */
  loraPlugin: boolean;
  maxLoraRank: number;
  /** Module names as TensorRT-LLM spells them (`attn_q`, ...), possibly including unknown ones. */
  targetModules: string[];
}

/** What running a TensorRT-LLM engine needs from its config.json. */
export interface TrtllmEngineLimits {
  maxBatchSize: number | undefined;
  maxSeqLen: number | undefined;
  maxNumTokens: number | undefined;
  vocabSize: number | undefined;
  /** tp_size x pp_size: GPUs (ranks) the engine runs on. */
  worldSize: number;
  /** Built with --gather_generation_logits: the backend can give top-k logprobs. */
  gatherGenerationLogits: boolean;
}

export interface BaseModel {
  /** The config.json that was read. */
  path: string;
  kind: "huggingface" | "trtllm-engine";
  architecture: string | undefined;
  dims: ModelDims;
  /** Set for TensorRT-LLM engines. */
  engine?: EngineLoraLimits & TrtllmEngineLimits;
}

/** Reads `<dir>/config.json` (or `dir` itself when it is the file) and recognises its kind. */
export function readBaseModel(dirOrFile: string): BaseModel {
  const path = isDirectory(dirOrFile) ? join(dirOrFile, "config.json") : dirOrFile;
  const json = readJson(path);
  if (typeof json === "object" && json !== null && "pretrained_config" in json && "build_config" in json) {
    const c = parseWith(TrtllmEngineConfigSchema, json, `${path} (TensorRT-LLM engine config)`);
    const p = c.pretrained_config;
    const b = c.build_config;
    const lora = b.lora_config;
    const plugin = b.plugin_config?.lora_plugin;
    return {
      path,
      kind: "trtllm-engine",
      architecture: p.architecture,
      dims: {
        hidden: p.hidden_size,
        intermediate: p.intermediate_size,
        layers: p.num_hidden_layers,
        heads: p.num_attention_heads,
        kvHeads: p.num_key_value_heads ?? p.num_attention_heads,
        headDim: p.head_size ?? p.head_dim ?? p.hidden_size / p.num_attention_heads,
      },
      engine: {
        dtype: parseFloatDType(p.dtype),
        dtypeName: p.dtype,
        loraPlugin: plugin !== undefined && plugin !== null && plugin !== false && plugin !== "disable",
        maxLoraRank: lora?.max_lora_rank ?? 0,
        targetModules: lora?.lora_target_modules ?? [],
        maxBatchSize: b.max_batch_size,
        maxSeqLen: b.max_seq_len,
        maxNumTokens: b.max_num_tokens,
        vocabSize: p.vocab_size,
        worldSize: p.mapping?.world_size ?? (p.mapping?.tp_size ?? 1) * (p.mapping?.pp_size ?? 1),
        gatherGenerationLogits: b.gather_generation_logits ?? false,
      },
    };
  }
  const c = parseWith(HfModelConfigSchema, json, `${path} (Hugging Face model config)`);
  return {
    path,
    kind: "huggingface",
    architecture: c.architectures?.[0] ?? c.model_type,
    dims: hfModelDims(c),
  };
}

/** The dimensions of a Hugging Face config, with transformers' defaults for kv heads and head_dim. */
export function hfModelDims(c: HfModelConfig): ModelDims {
  return {
    hidden: c.hidden_size,
    intermediate: c.intermediate_size,
    layers: c.num_hidden_layers,
    heads: c.num_attention_heads,
    kvHeads: c.num_key_value_heads ?? c.num_attention_heads,
    headDim: c.head_dim ?? c.hidden_size / c.num_attention_heads,
  };
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}
