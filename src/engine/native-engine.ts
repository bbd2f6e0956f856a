/**
 * An engine behind the C ABI (ffi/include/multilora.h), whichever library implements it: enqueues requests,
 * turns the response pump's messages into each request's events, and reads stats and capabilities. The CPU
 * engine (cpu-engine.ts) and the TensorRT-LLM backend (trtllm-engine.ts) differ only in how they are created.
 */
import { type Pointer, ptr } from "bun:ffi";
import { MultiloraError } from "../errors.ts";
import type { FloatDType } from "../formats/dtypes.ts";
import { workerUrl } from "../worker-url.ts";
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
  ErrorBuffer,
  LORA_TASK_STATS,
  MLR_DTYPE,
  MLR_FINISH,
  MLR_STATUS,
  type NativeSymbols,
  REQUEST,
  STATS,
  StructView,
  statusName,
} from "./native.ts";
import type { RawResponse } from "./response-pump.ts";

const DTYPE_BY_CODE: Record<number, FloatDType> = { 0: "F32", 1: "F16", 2: "BF16" };
const FINISH_BY_CODE: Record<number, FinishReason | null> = {
  [MLR_FINISH.NONE]: null,
  [MLR_FINISH.LENGTH]: "length",
  [MLR_FINISH.END_ID]: "end_id",
  [MLR_FINISH.STOP_ID]: "stop_id",
  [MLR_FINISH.CANCELLED]: "cancelled",
  [MLR_FINISH.CONSTRAINT]: "constraint",
};

/** Most cached adapters one stats() call lists. */
const STATS_TASKS = 256;

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

export class NativeEngine implements Engine {
  private readonly streams = new Map<bigint, EventStream>();
  private pumpError: string | undefined;
  private closed = false;
  readonly capabilities: EngineCapabilities;
  private readonly pump: Worker;
  private readonly stopFlag = new Int32Array(new SharedArrayBuffer(4));
  private readonly statsBuffers = {
    s: new StructView(STATS),
    tasks: new StructView(LORA_TASK_STATS, new Uint8Array(LORA_TASK_STATS.size * STATS_TASKS)),
    n: new Int32Array(1),
  };

  /** Takes over a created engine: reads its capabilities and starts its response pump. */
  protected constructor(
    private readonly lib: NativeSymbols,
    libraryPath: string,
    private readonly handle: Pointer,
    readonly maxSeqLen: number,
    readonly vocabSize: number,
  ) {
    const caps = new StructView(CAPABILITIES);
    lib.mlr_capabilities_get(handle, ptr(caps.bytes));
    this.capabilities = {
      loraPin: caps.get("lora_pin") === 1,
      loraRelease: caps.get("lora_release") === 1,
      loraTaskListing: caps.get("lora_task_listing") === 1,
      topLogprobs: caps.get("top_logprobs") === 1,
      loraScale: caps.get("lora_scale") === 1,
      maxTopLogprobs: caps.get("max_top_logprobs"),
      maxLoraRank: caps.get("max_lora_rank"),
      loraDtype: DTYPE_BY_CODE[caps.get("lora_dtype")] ?? "F32",
      rawLogprobs: caps.get("raw_logprobs") === 1,
      constraints: caps.get("constraints") === 1,
      logitBias: caps.get("logit_bias") === 1,
    };
    this.pump = new Worker(workerUrl("engine/response-pump.ts"));
    this.pump.onmessage = (event: MessageEvent<{ responses?: RawResponse[]; stopped?: boolean }>) => {
      for (const r of event.data.responses ?? []) this.deliver(r);
    };
    // Without its pump no response would ever arrive: fail what is waiting, loudly, rather than hang.
    this.pump.onerror = (event) => {
      this.pumpError = `the engine's response pump failed: ${event.message}`;
      console.error(this.pumpError);
      for (const stream of this.streams.values()) stream.fail(new EngineError("INTERNAL", this.pumpError));
      this.streams.clear();
    };
    this.pump.postMessage({ engine: handle, stop: this.stopFlag, library: libraryPath });
  }

  enqueue(request: GenerateRequest): RequestHandle {
    this.checkOpen();
    const r = new StructView(REQUEST);
    this.lib.mlr_request_default(ptr(r.bytes));
    const prompt = int32s(request.prompt);
    const endIds = int32s(request.endIds ?? []);
    const stopIds = int32s(request.stopIds ?? []);
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
    if (request.constraint) r.set("constraint", request.constraint.pointer);
    const bias = request.logitBias;
    if (bias && bias.ids.length > 0) {
      if (bias.values.length !== bias.ids.length)
        throw new MultiloraError("logitBias needs as many values as ids", { code: "internal_error" });
      r.set("logit_bias_ids", ptr(bias.ids))
        .set("logit_bias_values", ptr(bias.values))
        .set("n_logit_bias", bias.ids.length);
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
    if (r.hasLogprob) {
      event.logprob = r.logprob;
      event.top = r.top;
    }
    stream.push(event);
    if (finishReason) this.streams.delete(r.requestId);
  }

  stats(): EngineStats {
    this.checkOpen();
    // Read often (every listing, health check and metrics scrape): the buffers are the engine's, reused.
    const { s, tasks, n } = this.statsBuffers;
    const status = this.lib.mlr_stats_get(this.handle, ptr(s.bytes), ptr(tasks.bytes), STATS_TASKS, ptr(n));
    if (status !== MLR_STATUS.OK)
      throw new EngineError(
        statusName(status),
        "the engine could not list its cached adapters (out of memory)",
      );
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
      prefixQueryTokens: s.get("prefix_query_tokens"),
      prefixHitTokens: s.get("prefix_hit_tokens"),
      prefixReusedBlocks: s.get("prefix_reused_blocks"),
      prefixBlocks: s.get("prefix_blocks"),
      prefixBytes: s.get("prefix_bytes"),
      tasks: Array.from({ length: n[0] as number }, (_, i) => {
        const t = tasks.at(i * LORA_TASK_STATS.size);
        return {
          taskId: t.view.getBigUint64(t.base + LORA_TASK_STATS.offset("task_id"), true),
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
    const vocab = this.vocabSize;
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
        code: "engine_closed",
      });
  }
}

/** Ids as the C struct reads them: an Int32Array as it is (the task builder makes them), others copied. */
function int32s(ids: ArrayLike<number>): Int32Array {
  return ids instanceof Int32Array ? ids : Int32Array.from(ids);
}

function randomSeed(): bigint {
  return crypto.getRandomValues(new BigUint64Array(1))[0] as bigint;
}
