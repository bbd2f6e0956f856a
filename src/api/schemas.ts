/**
 * The OpenAI-compatible API's request and response bodies, as valibot schemas: the single source of the
 * request types and of their validation. Unknown fields are ignored (OpenAI's clients send extras), so
 * every object is loose; the fields that would change the output and are not implemented are refused when
 * the task is built (src/generation/task.ts). multilora's extensions: lora_model, load_lora_weights, lora_scale, top_k, min_p,
 * repetition_penalty, return_token_ids.
 */
import * as v from "valibot";

const Int = v.pipe(v.number(), v.integer());
const between = (min: number, max: number) => v.pipe(v.number(), v.minValue(min), v.maxValue(max));

const TextPart = v.looseObject({ type: v.literal("text"), text: v.string() });

export const ChatMessageSchema = v.looseObject({
  role: v.picklist(["system", "developer", "user", "assistant", "tool"]),
  content: v.nullish(v.union([v.string(), v.array(TextPart)])),
  name: v.optional(v.string()),
  tool_call_id: v.optional(v.string()),
  tool_calls: v.optional(v.array(v.unknown())),
});

/** Fields chat and completions share. */
const Generation = {
  model: v.pipe(v.string(), v.minLength(1)),
  max_tokens: v.nullish(v.pipe(Int, v.minValue(1))),
  temperature: v.nullish(between(0, 2)),
  top_p: v.nullish(v.pipe(v.number(), v.gtValue(0), v.maxValue(1))),
  n: v.optional(v.pipe(Int, v.minValue(1), v.maxValue(16)), 1),
  stop: v.nullish(v.union([v.string(), v.pipe(v.array(v.string()), v.maxLength(16))])),
  // The engine's seed is a uint64: a seed outside [0, 2^64) is refused, never wrapped.
  seed: v.nullish(v.pipe(Int, v.minValue(0), v.ltValue(2 ** 64))),
  presence_penalty: v.nullish(between(-2, 2)),
  frequency_penalty: v.nullish(between(-2, 2)),
  stream: v.optional(v.boolean(), false),
  stream_options: v.nullish(v.looseObject({ include_usage: v.optional(v.boolean()) })),
  user: v.optional(v.string()),
  // multilora and vLLM extensions
  lora_model: v.nullish(v.string()),
  load_lora_weights: v.optional(v.picklist(["auto", "always", "never"]), "auto"),
  lora_scale: v.optional(between(0, 100), 1),
  top_k: v.nullish(v.pipe(Int, v.minValue(-1))),
  min_p: v.nullish(between(0, 1)),
  repetition_penalty: v.nullish(v.pipe(v.number(), v.gtValue(0))),
  return_token_ids: v.optional(v.boolean(), false),
};

export const ChatCompletionRequestSchema = v.looseObject({
  ...Generation,
  messages: v.pipe(v.array(ChatMessageSchema), v.minLength(1)),
  max_completion_tokens: v.nullish(v.pipe(Int, v.minValue(1))),
  logprobs: v.optional(v.boolean(), false),
  top_logprobs: v.nullish(v.pipe(Int, v.minValue(0), v.maxValue(20))),
});

const TokenIds = v.pipe(v.array(v.pipe(Int, v.minValue(0))), v.minLength(1));

export const CompletionRequestSchema = v.looseObject({
  ...Generation,
  prompt: v.union([
    v.string(),
    v.pipe(v.array(v.string()), v.minLength(1)),
    TokenIds,
    v.pipe(v.array(TokenIds), v.minLength(1)),
  ]),
  logprobs: v.nullish(v.pipe(Int, v.minValue(0), v.maxValue(20))),
  echo: v.optional(v.boolean(), false),
});

export const LoadAdapterRequestSchema = v.looseObject({ pin: v.optional(v.boolean(), false) });

/** vLLM's runtime LoRA routes: POST /v1/load_lora_adapter and /v1/unload_lora_adapter. */
const LoraName = v.pipe(v.string(), v.minLength(1, "Both 'lora_name' and 'lora_path' must be provided."));
export const LoadLoraAdapterRequestSchema = v.looseObject({
  lora_name: LoraName,
  lora_path: v.pipe(v.string(), v.minLength(1, "Both 'lora_name' and 'lora_path' must be provided.")),
});
export const UnloadLoraAdapterRequestSchema = v.looseObject({
  lora_name: v.pipe(v.string(), v.minLength(1)),
});

export type ChatCompletionRequest = v.InferOutput<typeof ChatCompletionRequestSchema>;
export type CompletionRequest = v.InferOutput<typeof CompletionRequestSchema>;
export type ChatMessageInput = v.InferOutput<typeof ChatMessageSchema>;

// ---------------------------------------------------------------------------------------------------
// Responses (the OpenAPI document's; the routes build them)

export const ErrorResponseSchema = v.object({
  error: v.object({
    message: v.string(),
    type: v.string(),
    param: v.nullable(v.string()),
    code: v.nullable(v.string()),
  }),
});

const Usage = v.object({
  prompt_tokens: v.number(),
  completion_tokens: v.number(),
  total_tokens: v.number(),
});
const TopLogprob = v.object({ token: v.string(), logprob: v.number(), bytes: v.array(v.number()) });
const ChatLogprobs = v.nullable(
  v.object({ content: v.array(v.object({ ...TopLogprob.entries, top_logprobs: v.array(TopLogprob) })) }),
);
const Finish = v.nullable(v.picklist(["stop", "length"]));

export const ChatCompletionResponseSchema = v.object({
  id: v.string(),
  object: v.literal("chat.completion"),
  created: v.number(),
  model: v.string(),
  choices: v.array(
    v.object({
      index: v.number(),
      message: v.object({ role: v.literal("assistant"), content: v.string() }),
      logprobs: ChatLogprobs,
      finish_reason: Finish,
      token_ids: v.optional(v.array(v.number())),
    }),
  ),
  usage: Usage,
  prompt_token_ids: v.optional(v.array(v.number())),
});

export const ChatCompletionChunkSchema = v.object({
  id: v.string(),
  object: v.literal("chat.completion.chunk"),
  created: v.number(),
  model: v.string(),
  choices: v.array(
    v.object({
      index: v.number(),
      delta: v.object({
        role: v.optional(v.literal("assistant")),
        content: v.optional(v.string()),
        token_ids: v.optional(v.array(v.number())),
      }),
      logprobs: ChatLogprobs,
      finish_reason: Finish,
    }),
  ),
  usage: v.optional(Usage),
});

const CompletionLogprobs = v.nullable(
  v.object({
    tokens: v.array(v.string()),
    token_logprobs: v.array(v.number()),
    top_logprobs: v.array(v.record(v.string(), v.number())),
    text_offset: v.array(v.number()),
  }),
);

export const CompletionResponseSchema = v.object({
  id: v.string(),
  object: v.literal("text_completion"),
  created: v.number(),
  model: v.string(),
  choices: v.array(
    v.object({
      index: v.number(),
      text: v.string(),
      logprobs: CompletionLogprobs,
      finish_reason: Finish,
      token_ids: v.optional(v.array(v.number())),
      prompt_token_ids: v.optional(v.array(v.number())),
    }),
  ),
  usage: v.optional(Usage),
});

export const AdapterSchema = v.object({
  name: v.string(),
  format: v.picklist(["trtllm", "peft"]),
  state: v.picklist(["on_disk", "cached", "pinned"]),
  state_estimated: v.boolean(),
  active_requests: v.number(),
  version: v.optional(v.string()),
  task_id: v.optional(v.number()),
  rank: v.optional(v.number()),
  ranks: v.optional(v.array(v.number())),
  modules: v.optional(v.array(v.string())),
  layers: v.optional(v.number()),
  dtype: v.optional(v.string()),
  bytes: v.optional(v.number()),
  base_model: v.optional(v.nullable(v.string())),
  /** E.g. trained on another base model than the served one. */
  warnings: v.optional(v.array(v.string())),
  loaded_at: v.optional(v.number()),
  last_used_step: v.optional(v.nullable(v.number())),
});

export const ModelSchema = v.object({
  id: v.string(),
  object: v.literal("model"),
  created: v.number(),
  owned_by: v.string(),
  root: v.optional(v.string()),
  parent: v.nullable(v.string()),
  lora: v.optional(AdapterSchema),
});

export const ModelListSchema = v.object({ object: v.literal("list"), data: v.array(ModelSchema) });

export const AdapterListSchema = v.object({
  object: v.literal("list"),
  data: v.array(AdapterSchema),
  cache: v.object({
    bytes_used: v.number(),
    bytes_capacity: v.number(),
    adapters: v.number(),
    max_adapters: v.nullable(v.number()),
    estimated: v.boolean(),
  }),
});

export const ValidationResultSchema = v.object({
  name: v.string(),
  valid: v.boolean(),
  problems: v.array(v.string()),
  warnings: v.array(v.string()),
});

export const HealthSchema = v.object({
  status: v.string(),
  running: v.optional(v.number()),
  queued: v.optional(v.number()),
});
