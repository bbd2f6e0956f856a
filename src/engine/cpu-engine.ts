/**
 * The reference CPU engine (ffi/cpu, libmultilora.so): builds the ABI structs from a mapped checkpoint and
 * creates the engine over its tensors; everything after creation is NativeEngine's.
 */
import { type Pointer, ptr } from "bun:ffi";
import { MultiloraError } from "../errors.ts";
import type { FloatDType } from "../formats/dtypes.ts";
import type { Checkpoint } from "./checkpoint.ts";
import {
  CPU_PARAMS,
  ErrorBuffer,
  MLR_DTYPE,
  MLR_STATUS,
  type NativeSymbols,
  nativeLibraryPath,
  nativeSymbols,
  StructView,
  TENSOR,
} from "./native.ts";
import { NativeEngine } from "./native-engine.ts";

/** Engine sizing; each field has the C default when left out (ffi/include/multilora.h). */
export interface CpuEngineOptions {
  /** Sequences decoded together (default 8). */
  maxBatch?: number;
  /** Prompt + generated tokens per sequence (default min(4096, the model's limit)). */
  maxSeqLen?: number;
  /** KV cache budget in bytes (default: maxBatch sequences of maxSeqLen). */
  kvCacheBytes?: number;
  /** Compute threads (default: every core). */
  threads?: number;
  /** Prompt tokens per step (default 256). */
  prefillChunk?: number;
  /** Largest adapter rank (default 64). */
  maxLoraRank?: number;
  /** Adapter cache capacity in bytes (default 256 MiB). */
  loraCacheBytes?: number;
  /** Most adapters cached at once (default: no count limit). */
  maxLoras?: number;
  /** dtype adapters must have (default: the model's). */
  loraDtype?: FloatDType;
  /** Prefix reuse: K/V blocks of earlier sequences copied into prompts that start with the same tokens,
   * adapter and scale (default true). */
  kvCacheReuse?: boolean;
  /** Positions per reused block (default 32). */
  kvBlockTokens?: number;
}

export class CpuEngine extends NativeEngine {
  private constructor(
    private readonly symbols: NativeSymbols,
    library: string,
    private readonly engineHandle: Pointer,
    /** The model; a mapped one's files and tensors stay referenced: the engine reads the weights in place
     * until close(). A copied one keeps only its description (the engine holds its own copy). */
    readonly checkpoint: Checkpoint,
    maxSeqLen: number,
  ) {
    super(symbols, library, engineHandle, maxSeqLen, checkpoint.config.vocabSize);
  }

  /**
   * Test only (`mlr_cpu_test_fail_allocs`): the next `n` scratch allocations of this engine's forward
   * passes fail as if out of memory, so tests can see a failed step end its requests with OUT_OF_MEMORY
   * and the engine serve on. 0 clears.
   */
  failNextScratchAllocations(n: number): void {
    const status = this.symbols.mlr_cpu_test_fail_allocs(this.engineHandle, n);
    if (status !== MLR_STATUS.OK) throw new Error(`mlr_cpu_test_fail_allocs(${n}) returned ${status}`);
  }

  /**
   * Test only (`mlr_cpu_test_mask_overlap`): how constraint masks are computed ("overlap": by the mask
   * thread while the forward pass runs, the rest after it, the default; "inline": all after the pass;
   * "thread": all by the mask thread; undefined: unchanged), and how many each thread computed so far.
   */
  testMaskOverlap(mode?: "overlap" | "inline" | "thread"): { precomputed: number; inline: number } {
    const code = mode === undefined ? -1 : { inline: 0, overlap: 1, thread: 2 }[mode];
    const counts = new BigInt64Array(2);
    const status = this.symbols.mlr_cpu_test_mask_overlap(
      this.engineHandle,
      code,
      ptr(counts),
      ptr(counts, 8),
    );
    if (status !== MLR_STATUS.OK) throw new Error(`mlr_cpu_test_mask_overlap(${code}) returned ${status}`);
    return { precomputed: Number(counts[0]), inline: Number(counts[1]) };
  }

  /** Builds the engine over a mapped checkpoint and starts its response pump. */
  static create(checkpoint: Checkpoint, options: CpuEngineOptions = {}): CpuEngine {
    const library = nativeLibraryPath();
    const lib = nativeSymbols(library);
    const params = new StructView(CPU_PARAMS);
    lib.mlr_cpu_params_default(ptr(params.bytes));
    const c = checkpoint.config;
    const model = params.sub("model");
    model
      .set("hidden_size", c.hiddenSize)
      .set("intermediate_size", c.intermediateSize)
      .set("num_layers", c.numLayers)
      .set("num_heads", c.numHeads)
      .set("num_kv_heads", c.numKvHeads)
      .set("head_dim", c.headDim)
      .set("vocab_size", c.vocabSize)
      .set("max_position", c.maxPosition)
      .set("rms_norm_eps", c.rmsNormEps)
      .set("rope_theta", c.ropeTheta)
      .set("rope_scaling", c.ropeScaling ? 1 : 0)
      .set("rope_factor", c.ropeScaling?.factor ?? 0)
      .set("rope_low_freq_factor", c.ropeScaling?.lowFreqFactor ?? 0)
      .set("rope_high_freq_factor", c.ropeScaling?.highFreqFactor ?? 0)
      .set("rope_original_max_position", c.ropeScaling?.originalMaxPosition ?? 0)
      .set("tie_word_embeddings", c.tieWordEmbeddings ? 1 : 0)
      .set("attention_bias", c.attentionBias ? 1 : 0);

    // The tensor table: names are borrowed for the call, data for the engine's life.
    const table = new Uint8Array(TENSOR.size * checkpoint.tensors.length);
    const names = checkpoint.tensors.map((t) => new TextEncoder().encode(`${t.name}\0`));
    checkpoint.tensors.forEach((t, i) => {
      const entry = new StructView(TENSOR, table, i * TENSOR.size);
      entry
        .set("name", ptr(names[i] as Uint8Array))
        .set("data", ptr(t.data))
        .set("dtype", MLR_DTYPE[t.dtype]);
      entry.set("ndim", t.shape.length);
      entry.view.setBigInt64(i * TENSOR.size + TENSOR.offset("shape"), BigInt(t.shape[0] ?? 0), true);
      entry.view.setBigInt64(i * TENSOR.size + TENSOR.offset("shape") + 8, BigInt(t.shape[1] ?? 0), true);
    });
    params.set("tensors", ptr(table)).set("n_tensors", checkpoint.tensors.length);
    params.set("copy_weights", checkpoint.mapped ? 0 : 1);

    const maxSeqLen = Math.min(
      options.maxSeqLen ?? Math.min(4096, checkpoint.maxSequence),
      checkpoint.maxSequence,
    );
    if (options.maxSeqLen !== undefined && options.maxSeqLen > checkpoint.maxSequence) {
      throw new MultiloraError(
        `max sequence length ${options.maxSeqLen} exceeds what ${checkpoint.dir} supports (${checkpoint.maxSequence})`,
        { code: "invalid_argument" },
      );
    }
    params.set("max_seq_len", maxSeqLen);
    if (options.maxBatch !== undefined) params.set("max_batch", options.maxBatch);
    if (options.kvCacheBytes !== undefined) params.set("kv_cache_bytes", options.kvCacheBytes);
    if (options.threads !== undefined) params.set("threads", options.threads);
    if (options.prefillChunk !== undefined) params.set("prefill_chunk", options.prefillChunk);
    if (options.maxLoraRank !== undefined) params.set("max_lora_rank", options.maxLoraRank);
    if (options.loraCacheBytes !== undefined) params.set("lora_cache_bytes", options.loraCacheBytes);
    if (options.maxLoras !== undefined) params.set("max_loras", options.maxLoras);
    if (options.loraDtype !== undefined) params.set("lora_dtype", MLR_DTYPE[options.loraDtype]);
    if (options.kvCacheReuse !== undefined) params.set("kv_cache_reuse", options.kvCacheReuse ? 1 : 0);
    if (options.kvBlockTokens !== undefined) params.set("kv_block_tokens", options.kvBlockTokens);

    const out = new BigUint64Array(1);
    const err = new ErrorBuffer();
    const status = lib.mlr_cpu_create(ptr(params.bytes), ptr(out), err.ptr, err.bytes.length);
    if (status !== MLR_STATUS.OK) {
      throw new MultiloraError(`${checkpoint.dir}: the CPU engine cannot load this model:\n${err.text}`, {
        code: "invalid_model",
      });
    }
    const handle = Number(out[0]) as Pointer;
    const kept = checkpoint.mapped ? checkpoint : described(checkpoint);
    return new CpuEngine(lib, library, handle, kept, maxSeqLen);
  }
}

/** A copied checkpoint without its files and tensor bytes, so that their maps can go once the engine
 * has its copy. */
function described(checkpoint: Checkpoint): Checkpoint {
  const empty = new Uint8Array(0);
  return { ...checkpoint, files: [], tensors: checkpoint.tensors.map((t) => ({ ...t, data: empty })) };
}
