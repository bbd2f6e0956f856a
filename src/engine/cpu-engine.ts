/**
 * The reference CPU engine (ffi/cpu) behind the Engine interface: builds the ABI structs from a mapped
 * checkpoint, enqueues requests, and turns the response pump's messages into each request's events.
 */
import { type Pointer, ptr } from "bun:ffi";
import { MultiloraError } from "../errors.ts";
import type { FloatDType } from "../formats/dtypes.ts";
import { workerUrl } from "../worker-url.ts";
import type { Checkpoint } from "./checkpoint.ts";
import {
  type Engine,
  type EngineCapabilities,
  EngineError,
  type EngineErrorCode,
  type EngineStats,
  type FinishReason,
  type GenerateRequest,
  type RequestHandle,
  type TokenEvent,
} from "./engine.ts";
import {
  CAPABILITIES,
  CPU_PARAMS,
  ErrorBuffer,
  LORA_TASK_STATS,
  MLR_DTYPE,
  MLR_FINISH,
  MLR_STATUS,
  nativeLibraryPath,
  nativeSymbols,
  REQUEST,
  STATS,
  StructView,
  statusName,
  TENSOR,
} from "./native.ts";
import type { RawResponse } from "./response-pump.ts";

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
}

const DTYPE_BY_CODE: Record<number, FloatDType> = { 0: "F32", 1: "F16", 2: "BF16" };
const FINISH_BY_CODE: Record<number, FinishReason | null> = {
  [MLR_FINISH.NONE]: null,
  [MLR_FINISH.LENGTH]: "length",
  [MLR_FINISH.END_ID]: "end_id",
  [MLR_FINISH.STOP_ID]: "stop_id",
  [MLR_FINISH.CANCELLED]: "cancelled",
};

/** A request's events as an async iterable fed by the pump. */
class EventStream implements AsyncIterable<TokenEvent> {
  private readonly buffered: TokenEvent[] = [];
  private waiting: { resolve: (r: IteratorResult<TokenEvent>) => void; reject: (e: Error) => void } | null =
    null;
  private ended = false;
  private failure: Error | null = null;

  push(event: TokenEvent): void {
    if (this.waiting) {
      this.waiting.resolve({ value: event, done: false });
      this.waiting = null;
    } else {
      this.buffered.push(event);
    }
    if (event.finishReason) this.end();
  }

  end(): void {
    this.ended = true;
    if (this.waiting && this.buffered.length === 0) {
      this.waiting.resolve({ value: undefined, done: true });
      this.waiting = null;
    }
  }

  fail(error: Error): void {
    this.failure = error;
    this.ended = true;
    if (this.waiting) {
      this.waiting.reject(error);
      this.waiting = null;
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<TokenEvent> {
    return {
      next: () => {
        const event = this.buffered.shift();
        if (event) return Promise.resolve({ value: event, done: false });
        if (this.failure) return Promise.reject(this.failure);
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => {
          this.waiting = { resolve, reject };
        });
      },
    };
  }
}

export class CpuEngine implements Engine {
  private readonly streams = new Map<bigint, EventStream>();
  private pumpError: string | undefined;
  private readonly lib = nativeSymbols();
  private closed = false;

  private constructor(
    private readonly handle: Pointer,
    /** Kept referenced: the engine reads the weights from these mappings until close(). */
    readonly checkpoint: Checkpoint,
    private readonly pump: Worker,
    private readonly stopFlag: Int32Array,
    readonly capabilities: EngineCapabilities,
    readonly maxSeqLen: number,
  ) {
    pump.onmessage = (event: MessageEvent<{ responses?: RawResponse[]; stopped?: boolean }>) => {
      for (const r of event.data.responses ?? []) this.deliver(r);
    };
    // Without its pump no response would ever arrive: fail what is waiting, loudly, rather than hang.
    pump.onerror = (event) => {
      this.pumpError = `the engine's response pump failed: ${event.message}`;
      console.error(this.pumpError);
      for (const stream of this.streams.values()) stream.fail(new EngineError("INTERNAL", this.pumpError));
      this.streams.clear();
    };
  }

  /** Builds the engine over a mapped checkpoint and starts its response pump. */
  static create(checkpoint: Checkpoint, options: CpuEngineOptions = {}): CpuEngine {
    const lib = nativeSymbols();
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

    const out = new BigUint64Array(1);
    const err = new ErrorBuffer();
    const status = lib.mlr_cpu_create(ptr(params.bytes), ptr(out), err.ptr, err.bytes.length);
    if (status !== MLR_STATUS.OK) {
      throw new MultiloraError(`${checkpoint.dir}: the CPU engine cannot load this model:\n${err.text}`, {
        code: "invalid_model",
      });
    }
    const handle = Number(out[0]) as Pointer;
    const caps = new StructView(CAPABILITIES);
    lib.mlr_capabilities_get(handle, ptr(caps.bytes));
    const capabilities: EngineCapabilities = {
      loraPin: caps.get("lora_pin") === 1,
      loraRelease: caps.get("lora_release") === 1,
      loraTaskListing: caps.get("lora_task_listing") === 1,
      topLogprobs: caps.get("top_logprobs") === 1,
      loraScale: caps.get("lora_scale") === 1,
      maxTopLogprobs: caps.get("max_top_logprobs"),
      maxLoraRank: caps.get("max_lora_rank"),
      loraDtype: DTYPE_BY_CODE[caps.get("lora_dtype")] ?? "F32",
    };
    const stopFlag = new Int32Array(new SharedArrayBuffer(4));
    const pump = new Worker(workerUrl("engine/response-pump.ts"));
    pump.postMessage({ engine: handle, stop: stopFlag, library: nativeLibraryPath() });
    return new CpuEngine(handle, checkpoint, pump, stopFlag, capabilities, maxSeqLen);
  }

  enqueue(request: GenerateRequest): RequestHandle {
    this.checkOpen();
    const r = new StructView(REQUEST);
    this.lib.mlr_request_default(ptr(r.bytes));
    const prompt = Int32Array.from(request.prompt);
    const endIds = Int32Array.from(request.endIds ?? []);
    const stopIds = Int32Array.from(request.stopIds ?? []);
    if (prompt.length > 0) r.set("prompt", ptr(prompt));
    r.set("prompt_len", prompt.length).set("max_new_tokens", request.maxNewTokens);
    if (request.temperature !== undefined) r.set("temperature", request.temperature);
    if (request.topK !== undefined) r.set("top_k", request.topK);
    if (request.topP !== undefined) r.set("top_p", request.topP);
    if (request.minP !== undefined) r.set("min_p", request.minP);
    if (request.repetitionPenalty !== undefined) r.set("repetition_penalty", request.repetitionPenalty);
    if (request.frequencyPenalty !== undefined) r.set("frequency_penalty", request.frequencyPenalty);
    if (request.presencePenalty !== undefined) r.set("presence_penalty", request.presencePenalty);
    r.set("seed", BigInt.asUintN(64, BigInt(request.seed ?? randomSeed())));
    if (endIds.length > 0) r.set("end_ids", ptr(endIds)).set("n_end_ids", endIds.length);
    if (stopIds.length > 0) r.set("stop_ids", ptr(stopIds)).set("n_stop_ids", stopIds.length);
    r.set("top_logprobs", request.topLogprobs ?? -1);
    const lora = request.lora;
    if (lora) {
      r.set("lora_task_id", lora.taskId).set("lora_scale", lora.scale ?? 1);
      if (lora.weights && lora.config) {
        r.set("lora_weights", ptr(lora.weights.bytes))
          .set("lora_weights_dtype", MLR_DTYPE[lora.weights.dtype])
          .set("lora_rows", lora.weights.rows)
          .set("lora_row_len", lora.weights.rowLength)
          .set("lora_config", ptr(lora.config))
          .set("lora_config_width", lora.configWidth ?? 3);
      }
    }
    const id = new BigUint64Array(1);
    const err = new ErrorBuffer();
    const status = this.lib.mlr_enqueue(this.handle, ptr(r.bytes), ptr(id), err.ptr, err.bytes.length);
    if (status !== MLR_STATUS.OK) throw new EngineError(statusName(status), err.text);
    const requestId = id[0] as bigint;
    const stream = new EventStream();
    this.streams.set(requestId, stream);
    return { id: requestId, events: stream, cancel: () => this.cancel(requestId) };
  }

  private cancel(id: bigint): void {
    if (!this.closed) this.lib.mlr_cancel(this.handle, id);
  }

  private deliver(r: RawResponse): void {
    const stream = this.streams.get(r.requestId);
    if (!stream) return;
    if (r.status !== MLR_STATUS.OK) {
      this.streams.delete(r.requestId);
      const code: EngineErrorCode = statusName(r.status);
      if (code === "CANCELLED") stream.push({ token: -1, finishReason: "cancelled" });
      else stream.fail(new EngineError(code, r.error));
      return;
    }
    const finishReason = FINISH_BY_CODE[r.finishReason] ?? null;
    const event: TokenEvent = { token: r.token, finishReason };
    if (r.top.length > 0 || r.logprob !== 0) {
      event.logprob = r.logprob;
      event.top = r.top;
    }
    stream.push(event);
    if (finishReason) this.streams.delete(r.requestId);
  }

  stats(): EngineStats {
    this.checkOpen();
    const s = new StructView(STATS);
    const capacity = 256;
    const tasks = new Uint8Array(LORA_TASK_STATS.size * capacity);
    const n = new Int32Array(1);
    this.lib.mlr_stats_get(this.handle, ptr(s.bytes), ptr(tasks), capacity, ptr(n));
    return {
      running: s.get("running"),
      queued: s.get("queued"),
      kvBytesUsed: s.get("kv_bytes_used"),
      kvBytesCapacity: s.get("kv_bytes_capacity"),
      loraBytesUsed: s.get("lora_bytes_used"),
      loraBytesCapacity: s.get("lora_bytes_capacity"),
      loraTasks: s.get("lora_tasks"),
      maxLoras: s.get("max_loras"),
      loraPuts: s.get("lora_puts"),
      loraHits: s.get("lora_hits"),
      loraMisses: s.get("lora_misses"),
      loraEvictions: s.get("lora_evictions"),
      steps: s.get("steps"),
      tokensGenerated: s.get("tokens_generated"),
      tasks: Array.from({ length: n[0] as number }, (_, i) => {
        const t = new StructView(LORA_TASK_STATS, tasks, i * LORA_TASK_STATS.size);
        return {
          taskId: t.view.getBigUint64(i * LORA_TASK_STATS.size + LORA_TASK_STATS.offset("task_id"), true),
          bytes: t.get("bytes"),
          active: t.get("active"),
          pinned: t.get("pinned") === 1,
          releasePending: t.get("release_pending") === 1,
          rows: t.get("rows"),
          lastUse: t.get("last_use"),
        };
      }),
    };
  }

  loraPin(taskId: bigint, on: boolean): void {
    this.checkOpen();
    const err = new ErrorBuffer();
    const status = this.lib.mlr_lora_pin(this.handle, taskId, on ? 1 : 0, err.ptr, err.bytes.length);
    if (status !== MLR_STATUS.OK) throw new EngineError(statusName(status), err.text);
  }

  loraRelease(taskId: bigint): void {
    this.checkOpen();
    const err = new ErrorBuffer();
    const status = this.lib.mlr_lora_release(this.handle, taskId, err.ptr, err.bytes.length);
    if (status !== MLR_STATUS.OK) throw new EngineError(statusName(status), err.text);
  }

  /**
   * The logits of every position of `tokens` run as one fresh sequence (with a cached adapter, or none):
   * [tokens.length][vocab]. Synchronous: meant for tests and prompt scoring, not the serving path.
   */
  forwardLogits(tokens: ArrayLike<number>, lora?: { taskId: bigint; scale?: number }): Float32Array[] {
    this.checkOpen();
    const vocab = this.checkpoint.config.vocabSize;
    const ids = Int32Array.from(tokens);
    const logits = new Float32Array(ids.length * vocab);
    const err = new ErrorBuffer();
    const status = this.lib.mlr_forward_logits(
      this.handle,
      ptr(ids),
      ids.length,
      lora?.taskId ?? 0n,
      lora?.scale ?? 1,
      ptr(logits),
      err.ptr,
      err.bytes.length,
    );
    if (status !== MLR_STATUS.OK) throw new EngineError(statusName(status), err.text);
    return Array.from({ length: ids.length }, (_, i) => logits.subarray(i * vocab, (i + 1) * vocab));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const stopped = new Promise<void>((resolve) => {
      this.pump.onmessage = (event: MessageEvent<{ stopped?: boolean }>) => {
        if (event.data.stopped) resolve();
      };
    });
    Atomics.store(this.stopFlag, 0, 1);
    await stopped;
    this.pump.terminate();
    this.lib.mlr_destroy(this.handle);
    for (const stream of this.streams.values())
      stream.fail(new EngineError("CANCELLED", "the engine was closed"));
    this.streams.clear();
  }

  private checkOpen(): void {
    if (this.pumpError) throw new EngineError("INTERNAL", this.pumpError);
    if (this.closed)
      throw new MultiloraError("the engine is closed", {
        status: 503,
        type: "server_error",
        code: "engine_closed",
      });
  }
}

function randomSeed(): bigint {
  return crypto.getRandomValues(new BigUint64Array(1))[0] as bigint;
}
