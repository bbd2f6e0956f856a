/**
 * Which engine runs a model dir, and opening it: TensorRT-LLM for a `trtllm-build` engine dir (config.json
 * with `build_config`), the CPU engine for a Hugging Face checkpoint. `--backend` overrides, and a mismatch
 * is refused with the reason rather than failing later inside an engine.
 */
import { MultiloraError } from "../errors.ts";
import type { BaseModel, ModelDims } from "../formats/model-config.ts";
import { loadCheckpoint, type ModelMemory } from "./checkpoint.ts";
import { CpuEngine, type CpuEngineOptions } from "./cpu-engine.ts";
import type { Engine } from "./engine.ts";
import { cpuKernelPath } from "./native.ts";
import { isTrtllmEngineDir, TrtllmEngine, type TrtllmEngineOptions } from "./trtllm-engine.ts";

export type Backend = "cpu" | "trtllm";

/** What is known of the model, whichever backend runs it. */
export interface OpenedModel {
  engine: Engine;
  backend: Backend;
  dims: ModelDims;
  architecture: string;
  dtype: string;
  /** `llama`, `qwen2`, ...: a name the model also answers to. */
  modelType: string;
  /** The Hugging Face name the checkpoint was made from, when known. */
  baseModelName: string | undefined;
  /** How the CPU engine holds the weights, for the start-up line. */
  weights?: string;
  /** A TensorRT-LLM engine's config, which adapters are checked against before they are sent. */
  engineConfig?: BaseModel;
}

export function chooseBackend(modelDir: string, requested: Backend | "auto"): Backend {
  const isEngine = isTrtllmEngineDir(modelDir);
  if (requested === "auto") return isEngine ? "trtllm" : "cpu";
  if (requested === "cpu" && isEngine)
    throw new MultiloraError(
      `${modelDir} is a TensorRT-LLM engine (trtllm-build output); the CPU engine runs Hugging Face checkpoints. Use --backend trtllm or auto.`,
      { code: "invalid_model" },
    );
  if (requested === "trtllm" && !isEngine)
    throw new MultiloraError(
      `${modelDir} is not a trtllm-build engine dir (no config.json with build_config); build one with scripts/build-engine.sh, or use --backend cpu for a Hugging Face checkpoint.`,
      { code: "invalid_model" },
    );
  return requested;
}

/** Opens the model dir on the chosen backend, with that backend's options. */
export function openEngine(
  modelDir: string,
  requested: Backend | "auto",
  options: { cpu?: CpuEngineOptions; trtllm?: TrtllmEngineOptions; modelMemory?: ModelMemory } = {},
): OpenedModel {
  const backend = chooseBackend(modelDir, requested);
  if (backend === "trtllm") {
    const engine = TrtllmEngine.create(modelDir, options.trtllm);
    const m = engine.model;
    return {
      engine,
      backend,
      dims: m.dims,
      architecture: m.architecture ?? "TensorRT-LLM engine",
      dtype: m.engine?.dtypeName ?? "",
      modelType: (m.architecture ?? "").replace(/ForCausalLM$/, "").toLowerCase(), // "llama", as on the CPU
      baseModelName: undefined,
      engineConfig: m,
    };
  }
  const checkpoint = loadCheckpoint(modelDir, { memory: options.modelMemory });
  return {
    engine: CpuEngine.create(checkpoint, options.cpu),
    backend,
    dims: checkpoint.dims,
    architecture: checkpoint.architecture,
    dtype: checkpoint.dtype,
    modelType: checkpoint.modelType,
    baseModelName: checkpoint.hf._name_or_path,
    weights:
      (checkpoint.mapped
        ? "weights memory-mapped"
        : "weights copied into the engine's memory (--model-memory)") +
      // the avx512 path packs every BF16 matrix into panels of its own (ffi/cpu/gemm_panels.c)
      (checkpoint.dtype === "BF16" && cpuKernelPath() === "avx512"
        ? checkpoint.mapped
          ? ", BF16 matrices repacked into the engine's memory for its avx512 kernels"
          : ", BF16 matrices repacked for its avx512 kernels"
        : ""),
  };
}
