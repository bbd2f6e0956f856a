/**
 * A Hugging Face checkpoint folder opened for the CPU engine: `config.json` checked for what the engine
 * supports (every unsupported field named), and `model.safetensors` (or the shards listed by
 * `model.safetensors.index.json`) memory-mapped: the engine reads the weights in place from the map, or
 * (copy) copies what it reads into its own memory while it starts, after which nothing reads the map.
 *
 * Why not always map: a mapping is backed by the file, so a file truncated or rewritten in place while
 * serving (`cp new.safetensors model.safetensors` does exactly that) kills the process with SIGBUS on the
 * next touch of a page that is gone; no check at start prevents a later write, and a SIGBUS cannot be
 * caught safely inside the engine's compute threads. So `auto` reads in place only files nobody may write
 * without first changing their mode (no write permission bit: `chmod a-w`), and has the engine copy the
 * others (the process holds the weights once, the page cache keeps its reclaimable pages; the CPU engine
 * copies straight from the map, so the weights are never in memory twice, and a file that changes during
 * those first seconds of start-up is the one window left). A file that cannot be mapped is read instead.
 * Replacing a file by rename (a new inode) is safe either way.
 */
import { accessSync, constants, existsSync, statSync } from "node:fs";
import { join } from "node:path";
import * as v from "valibot";
import { listProblems, MultiloraError } from "../errors.ts";
import type { FloatDType } from "../formats/dtypes.ts";
import { parseWith, readJson, readJsonFile } from "../formats/json-file.ts";
import {
  type HfModelConfig,
  HfModelConfigSchema,
  hfModelDims,
  type ModelDims,
} from "../formats/model-config.ts";
import { mmapSafetensors, readSafetensors, type SafetensorsFile } from "../formats/safetensors-reader.ts";

export const SUPPORTED_ARCHITECTURES = [
  "LlamaForCausalLM",
  "MistralForCausalLM",
  "Qwen2ForCausalLM",
] as const;

/** The model's hyper-parameters as the engine ABI takes them (`mlr_model_config`). */
export interface EngineModelConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPosition: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** null, or transformers' llama3 scaling. */
  ropeScaling: {
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalMaxPosition: number;
  } | null;
  tieWordEmbeddings: boolean;
  attentionBias: boolean;
}

export interface CheckpointTensor {
  name: string;
  dtype: FloatDType;
  shape: readonly number[];
  /** A view into the memory map. */
  data: Uint8Array;
}

export interface Checkpoint {
  dir: string;
  architecture: string;
  /** `model_type`, e.g. "llama". */
  modelType: string;
  hf: HfModelConfig;
  /** The dimensions adapters are checked against. */
  dims: ModelDims;
  config: EngineModelConfig;
  /** The weights' dtype (of the first projection). */
  dtype: FloatDType;
  /** Largest sequence the model supports with full attention (sliding_window caps it for Mistral). */
  maxSequence: number;
  tensors: CheckpointTensor[];
  /** The weights files (mapped, or read where mapping failed): referenced while the engine reads them. */
  files: SafetensorsFile[];
  /** Bytes of weights. */
  bytes: number;
  /** Whether the engine reads the weights in place from their memory map while it runs (else it copies
   * them while it starts: `copy`). */
  mapped: boolean;
}

const IndexSchema = v.looseObject({ weight_map: v.record(v.string(), v.string()) });

/** How the engine holds the weights: read in place from the map, copied into its memory at start, or read
 * in place only when the file is read-only (auto). */
export type ModelMemory = "auto" | "map" | "copy";

/** Opens the checkpoint in `dir`; one error lists every unsupported setting. */
export function loadCheckpoint(dir: string, options: { memory?: ModelMemory } = {}): Checkpoint {
  const configPath = join(dir, "config.json");
  if (!existsSync(configPath)) {
    throw new MultiloraError(`${dir}: no config.json; give a Hugging Face model folder`, {
      code: "invalid_model",
    });
  }
  const hf = readJsonFile(configPath, HfModelConfigSchema, "invalid_model");
  const config = engineConfig(hf, configPath);
  const files = openWeights(dir, options.memory ?? "auto");
  const tensors: CheckpointTensor[] = [];
  const problems: string[] = [];
  for (const file of files) {
    for (const t of file.tensors.values()) {
      if (t.dtype !== "F32" && t.dtype !== "F16" && t.dtype !== "BF16") {
        problems.push(
          `${file.path}: tensor "${t.name}" has dtype ${t.dtype}; weights must be F32, F16 or BF16`,
        );
        continue;
      }
      tensors.push({ name: t.name, dtype: t.dtype, shape: t.shape, data: file.rawBytes(t.name) });
    }
  }
  if (problems.length > 0)
    throw new MultiloraError(listProblems(`${dir} cannot be loaded:`, problems), { code: "invalid_model" });
  const architecture = hf.architectures?.[0] ?? "";
  const q = tensors.find((t) => t.name === "model.layers.0.self_attn.q_proj.weight");
  const window =
    hf.sliding_window && hf.use_sliding_window !== false ? hf.sliding_window : Number.POSITIVE_INFINITY;
  return {
    dir,
    architecture,
    modelType: hf.model_type ?? "",
    hf,
    dims: hfModelDims(hf),
    config,
    dtype: q?.dtype ?? "F32",
    maxSequence: Math.min(config.maxPosition, window),
    tensors,
    files,
    bytes: files.reduce((sum, f) => sum + f.bytes.length, 0),
    mapped: files.every((f) => f.mapped),
  };
}

function engineConfig(hf: HfModelConfig, path: string): EngineModelConfig {
  const problems: string[] = [];
  const architecture = hf.architectures?.[0];
  if (!architecture || !(SUPPORTED_ARCHITECTURES as readonly string[]).includes(architecture)) {
    problems.push(
      `architectures: ${JSON.stringify(hf.architectures ?? null)}; supported: ${SUPPORTED_ARCHITECTURES.join(", ")}`,
    );
  }
  if (hf.hidden_act !== undefined && hf.hidden_act !== "silu")
    problems.push(`hidden_act: "${hf.hidden_act}"; only silu is supported`);
  if (hf.mlp_bias) problems.push("mlp_bias: true is not supported");
  const isQwen2 = architecture === "Qwen2ForCausalLM";
  if (hf.attention_bias && !isQwen2)
    problems.push("attention_bias: true (a bias on o_proj too) is not supported");
  if (hf.vocab_size === undefined) problems.push("vocab_size: missing");
  let ropeScaling: EngineModelConfig["ropeScaling"] = null;
  const rs = hf.rope_scaling;
  if (rs) {
    const type = rs.rope_type ?? rs.type;
    if (type === "llama3") {
      if (!rs.factor || !rs.low_freq_factor || !rs.high_freq_factor || !rs.original_max_position_embeddings) {
        problems.push(
          "rope_scaling: llama3 needs factor, low_freq_factor, high_freq_factor, original_max_position_embeddings",
        );
      } else {
        ropeScaling = {
          factor: rs.factor,
          lowFreqFactor: rs.low_freq_factor,
          highFreqFactor: rs.high_freq_factor,
          originalMaxPosition: rs.original_max_position_embeddings,
        };
      }
    } else if (type !== "default") {
      problems.push(`rope_scaling: type ${JSON.stringify(type)} is not supported (none or llama3)`);
    }
  }
  if (problems.length > 0)
    throw new MultiloraError(listProblems(`${path}: unsupported model:`, problems), {
      code: "invalid_model",
    });
  const d = hfModelDims(hf);
  return {
    hiddenSize: d.hidden,
    intermediateSize: d.intermediate,
    numLayers: d.layers,
    numHeads: d.heads,
    numKvHeads: d.kvHeads,
    headDim: d.headDim,
    vocabSize: hf.vocab_size as number,
    maxPosition: hf.max_position_embeddings ?? 4096,
    rmsNormEps: hf.rms_norm_eps,
    ropeTheta: hf.rope_theta,
    ropeScaling,
    tieWordEmbeddings: hf.tie_word_embeddings ?? false,
    attentionBias: isQwen2 || (hf.attention_bias ?? false),
  };
}

/**
 * Whether a weights file is mapped: always, never, or (auto) when it cannot be written in place: no write
 * permission bit, or not writable by this process (a read-only mount, as Kubernetes volumes often are).
 */
export function mapsWeights(path: string, memory: ModelMemory): boolean {
  if (memory !== "auto") return memory === "map";
  try {
    if ((statSync(path).mode & 0o222) === 0) return true;
    accessSync(path, constants.W_OK);
    return false;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === "EROFS" || code === "EACCES" || code === "EPERM" || code === "ENOENT"; // ENOENT: the open reports it
  }
}

function openWeightsFile(path: string, memory: ModelMemory): SafetensorsFile & { mapped: boolean } {
  const mapped = mapsWeights(path, memory);
  return Object.assign(mapped ? mmapSafetensors(path) : mapOrRead(path), { mapped });
}

/** For an engine that copies the weights as it starts: mapped (no second copy), or read where mapping fails. */
function mapOrRead(path: string): SafetensorsFile {
  try {
    return mmapSafetensors(path);
  } catch {
    return readSafetensors(path); // its errors are the clear ones (missing, unreadable, malformed)
  }
}

/** Opens model.safetensors, or every shard named by model.safetensors.index.json. */
function openWeights(dir: string, memory: ModelMemory): (SafetensorsFile & { mapped: boolean })[] {
  const single = join(dir, "model.safetensors");
  if (existsSync(single)) return [openWeightsFile(single, memory)];
  const indexPath = join(dir, "model.safetensors.index.json");
  if (!existsSync(indexPath)) {
    throw new MultiloraError(`${dir}: neither model.safetensors nor model.safetensors.index.json is there`, {
      code: "invalid_model",
    });
  }
  const index = parseWith(IndexSchema, readJson(indexPath, "invalid_model"), indexPath, "invalid_model");
  const shards = [...new Set(Object.values(index.weight_map))].sort();
  return shards.map((shard) => openWeightsFile(join(dir, shard), memory));
}
