/**
 * The engine interface the server talks to, whatever the backend (the CPU engine here, TensorRT-LLM
 * through the same C ABI). Requests are enqueued and answered with a stream of token events; LoRA
 * adapters travel as integer task ids with optional weights (TensorRT-LLM's model).
 */
import { type ErrorCode, MultiloraError } from "../errors.ts";
import type { FloatDType } from "../formats/dtypes.ts";
import type { ConstraintMatcher } from "./constraint-native.ts";
import type { MLR_STATUS } from "./native.ts";

/** Why a request ended; "constraint": its constraint is complete and allows nothing more (the last token
 * is the constraint's, not an end id). */
export type FinishReason = "length" | "end_id" | "stop_id" | "cancelled" | "constraint";

/** An adapter for one request: its task id, with its weights when the engine may not have them. */
export interface LoraRef {
  taskId: bigint;
  /** [rows, rowLength] in `dtype`, TensorRT-LLM's format; copied by enqueue. */
  weights?: { bytes: Uint8Array; dtype: FloatDType; rows: number; rowLength: number };
  /** [rows, configWidth] int32 rows [module_id, layer, rank(, is_dora)]; copied by enqueue. */
  config?: Int32Array;
  configWidth?: 3 | 4;
  /** Multiplies B's contribution (default 1). */
  scale?: number;
}

export interface GenerateRequest {
  /** Token ids, used as given (no BOS added). */
  prompt: ArrayLike<number>;
  maxNewTokens: number;
  /** 0 = greedy (default 1). */
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
  seed?: bigint | number;
  endIds?: ArrayLike<number>;
  stopIds?: ArrayLike<number>;
  /** Log-probabilities: undefined = none, 0 = the chosen token's, k = also the k most likely. */
  topLogprobs?: number;
  lora?: LoraRef;
  /** Only tokens this matcher allows are sampled (end and stop ids only where it is complete). Borrowed for
   * the call: the engine copies it at enqueue, so the caller may free it right after. Needs
   * `capabilities.constraints` (else enqueue throws UNSUPPORTED), and a matcher from the engine's library. */
  constraint?: ConstraintMatcher | null;
  /** Added to the logits of `ids[i]` before sampling (before penalties, temperature, top-k/p; logprobs stay
   * the raw model's): values in [-100, 100], -100 bans the token; a token the constraint disallows stays
   * disallowed. Copied at enqueue. Needs `capabilities.logitBias` (else enqueue throws UNSUPPORTED). */
  logitBias?: { ids: Int32Array; values: Float32Array };
}

export interface TokenEvent {
  token: number;
  /** Log-softmax of the raw logits (before temperature and other transforms), when asked for. */
  logprob?: number;
  top?: { token: number; logprob: number }[];
  /** Set on the last event. */
  finishReason: FinishReason | null;
}

/** A request in flight: its events end with a finish reason, or throw an EngineError. */
export interface RequestHandle {
  id: bigint;
  events: AsyncIterable<TokenEvent>;
  cancel(): void;
}

/** The ABI's status codes, by name. */
export type EngineErrorCode = Exclude<keyof typeof MLR_STATUS, "OK">;

/** The error code each engine status reaches clients with (the status's name in lower case). */
const ERROR_CODE: Record<EngineErrorCode, ErrorCode> = {
  INVALID_ARGUMENT: "invalid_argument",
  LORA_NOT_CACHED: "lora_not_cached",
  LORA_CACHE_FULL: "lora_cache_full",
  LORA_INVALID: "lora_invalid",
  CANCELLED: "cancelled",
  UNSUPPORTED: "unsupported",
  INTERNAL: "internal",
  OUT_OF_MEMORY: "out_of_memory",
  NOT_FOUND: "not_found",
};

/** An error the engine reported, with its ABI code. */
export class EngineError extends MultiloraError {
  constructor(
    readonly engineCode: EngineErrorCode,
    message: string,
  ) {
    super(message, { code: ERROR_CODE[engineCode] });
    this.name = "EngineError";
  }
}

export interface EngineCapabilities {
  loraPin: boolean;
  loraRelease: boolean;
  loraTaskListing: boolean;
  topLogprobs: boolean;
  loraScale: boolean;
  maxTopLogprobs: number;
  maxLoraRank: number;
  loraDtype: FloatDType;
  /** Logprobs are the log-softmax of the raw logits (true), or the sampling layer's, after temperature and
   * penalties (false: TensorRT-LLM engines built without --gather_generation_logits). */
  rawLogprobs: boolean;
  /** GenerateRequest.constraint works. */
  constraints: boolean;
  /** GenerateRequest.logitBias works. */
  logitBias: boolean;
}

export interface LoraTaskStats {
  taskId: bigint;
  bytes: number;
  active: number;
  pinned: boolean;
  releasePending: boolean;
  rows: number;
  lastUse: number;
}

export interface EngineStats {
  running: number;
  queued: number;
  kvBytesUsed: number;
  kvBytesCapacity: number;
  loraBytesUsed: number;
  loraBytesCapacity: number;
  loraTasks: number;
  maxLoras: number;
  loraPuts: number;
  loraHits: number;
  loraMisses: number;
  loraEvictions: number;
  steps: number;
  tokensGenerated: number;
  /** Prompt tokens looked up in the prefix (KV) cache, and of those the ones reused, not computed. */
  prefixQueryTokens: number;
  prefixHitTokens: number;
  /** KV blocks copied from the prefix cache into sequences. */
  prefixReusedBlocks: number;
  /** Blocks in the prefix cache now, and their bytes (within kvBytesCapacity, beside kvBytesUsed). */
  prefixBlocks: number;
  prefixBytes: number;
  tasks: LoraTaskStats[];
}

export interface Engine {
  readonly capabilities: EngineCapabilities;
  /** Prompt + generated tokens per sequence. */
  readonly maxSeqLen: number;
  /** Token ids the model knows: [0, vocabSize). */
  readonly vocabSize: number;
  /** Queues a request; argument errors throw at once, everything else arrives through the events. */
  enqueue(request: GenerateRequest): RequestHandle;
  stats(): EngineStats;
  loraPin(taskId: bigint, on: boolean): void;
  loraRelease(taskId: bigint): void;
  /** Stops the engine; requests in flight end without further events. */
  close(): Promise<void>;
}
