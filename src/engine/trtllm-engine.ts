/**
 * The TensorRT-LLM backend (ffi/trtllm, libmultilora-trtllm.so) over a `trtllm-build` engine dir: reads the
 * engine's config.json, fills `mlr_trtllm_params` and creates the executor; everything after creation is
 * NativeEngine's. The shim is built only where TensorRT-LLM is installed, so a missing library is a clear
 * error that says how to get it.
 */
import { type Pointer, ptr } from "bun:ffi";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { MultiloraError } from "../errors.ts";
import { type BaseModel, readBaseModel } from "../formats/model-config.ts";
import {
  ErrorBuffer,
  MLR_DTYPE,
  MLR_STATUS,
  type NativeSymbols,
  nativeSymbols,
  StructView,
  TRTLLM_PARAMS,
  trtllmLibraryPath,
} from "./native.ts";
import { NativeEngine } from "./native-engine.ts";
import { resolveTrtllmWorker } from "./trtllm-worker.ts";

/** Executor settings; each left out takes TensorRT-LLM's own default. */
export interface TrtllmEngineOptions {
  /** Overrides the engine's max_batch_size (at most it). */
  maxBatch?: number;
  /** KvCacheConfig freeGpuMemoryFraction (TensorRT-LLM: 0.9). */
  kvCacheFreeGpuMemFraction?: number;
  /** KvCacheConfig enableBlockReuse (default on: every adapter version has its own task id, and the
   * executor's block keys include the LoRA task id, so a reused block never crosses adapters). */
  kvCacheReuse?: boolean;
  /** PeftCacheConfig hostCacheSize in bytes (TensorRT-LLM: 1 GiB). */
  loraHostCacheBytes?: number;
  /** PeftCacheConfig deviceCachePercent (a fraction of free GPU memory). */
  loraDeviceCachePercent?: number;
  /** PeftCacheConfig optimalAdapterSize (TensorRT-LLM: 8). */
  loraOptimalAdapterSize?: number;
  /** PeftCacheConfig maxAdapterSize (TensorRT-LLM: 64). */
  loraMaxAdapterSize?: number;
  /** Sizes the device cache to hold this many max-rank adapters on every module (as TensorRT-LLM's max_loras). */
  maxLoras?: number;
  /** Orchestrator mode's worker executable (multi-GPU engines); default `<tensorrt_llm>/bin/executorWorker`
   * (src/engine/trtllm-worker.ts), and a multi-GPU engine without one is refused. */
  workerPath?: string;
}

/** A `trtllm-build` output: config.json with `build_config`, and the rank engines beside it. */
export function isTrtllmEngineDir(dir: string): boolean {
  if (!existsSync(join(dir, "config.json"))) return false;
  try {
    return readBaseModel(dir).kind === "trtllm-engine";
  } catch {
    return false;
  }
}

export class TrtllmEngine extends NativeEngine {
  private constructor(
    lib: NativeSymbols,
    library: string,
    handle: Pointer,
    readonly model: BaseModel,
    maxSeqLen: number,
  ) {
    super(lib, library, handle, maxSeqLen, model.engine?.vocabSize ?? 0);
  }

  static create(engineDir: string, options: TrtllmEngineOptions = {}): TrtllmEngine {
    const model = readBaseModel(engineDir);
    const e = model.engine;
    if (model.kind !== "trtllm-engine" || !e)
      throw new MultiloraError(
        `${engineDir} is not a trtllm-build engine dir (its config.json has no build_config)`,
        {
          code: "invalid_model",
        },
      );
    if (!existsSync(join(engineDir, "rank0.engine")))
      throw new MultiloraError(
        `${engineDir}: rank0.engine is missing; was trtllm-build run into this folder?`,
        {
          code: "invalid_model",
        },
      );
    if (e.dtype === undefined)
      throw new MultiloraError(
        `${model.path}: engine dtype ${e.dtypeName} is not float32, float16 or bfloat16`,
        {
          code: "invalid_model",
        },
      );
    const library = trtllmLibraryPath();
    if (!existsSync(library))
      throw new MultiloraError(
        `${engineDir} is a TensorRT-LLM engine, but the TensorRT-LLM backend library is not installed (${library}). ` +
          "Build it where TensorRT-LLM and CUDA are installed (ffi/trtllm/README.md), use the Docker image, " +
          "or set MULTILORA_TRTLLM_LIB to its path; --backend cpu runs Hugging Face checkpoints instead.",
        { code: "backend_unavailable" },
      );
    const lib = nativeSymbols(library);

    const params = new StructView(TRTLLM_PARAMS);
    const dir = new TextEncoder().encode(`${engineDir}\0`);
    const workerPath = resolveTrtllmWorker(e.worldSize, options.workerPath);
    const worker = workerPath ? new TextEncoder().encode(`${workerPath}\0`) : undefined;
    params
      .set("engine_dir", ptr(dir))
      .set("engine_dtype", MLR_DTYPE[e.dtype])
      .set("max_lora_rank", e.loraPlugin ? e.maxLoraRank : 0)
      .set("num_layers", model.dims.layers)
      .set("num_lora_modules", e.targetModules.length)
      .set("world_size", e.worldSize)
      .set("max_batch_size", options.maxBatch ?? -1)
      .set("max_num_tokens", -1)
      .set("gather_generation_logits", e.gatherGenerationLogits ? 1 : 0)
      .set("kv_cache_free_gpu_mem_fraction", options.kvCacheFreeGpuMemFraction ?? -1)
      .set("kv_cache_reuse", (options.kvCacheReuse ?? true) ? 1 : 0)
      .set("lora_host_cache_bytes", options.loraHostCacheBytes ?? -1)
      .set("lora_device_cache_percent", options.loraDeviceCachePercent ?? -1)
      .set("lora_optimal_adapter_size", options.loraOptimalAdapterSize ?? -1)
      .set("lora_max_adapter_size", options.loraMaxAdapterSize ?? -1)
      .set("max_loras", options.maxLoras ?? 0)
      .set("worker_path", worker ? ptr(worker) : 0);

    const out = new BigUint64Array(1);
    const err = new ErrorBuffer();
    const status = lib.mlr_trtllm_create(ptr(params.bytes), ptr(out), err.ptr, err.bytes.length);
    if (status !== MLR_STATUS.OK)
      throw new MultiloraError(`${engineDir}: TensorRT-LLM cannot start this engine:\n${err.text}`, {
        code: "invalid_model",
      });
    return new TrtllmEngine(lib, library, Number(out[0]) as Pointer, model, e.maxSeqLen ?? 4096);
  }
}
