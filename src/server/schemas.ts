/**
 * Request bodies of the OpenAI-compatible API, as valibot schemas: the single source of the request types
 * and of their validation. Unknown fields are ignored (OpenAI's clients send extras), so every object is
 * loose. multilora's extensions: lora_model, load_lora_weights, lora_scale, top_k, min_p,
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
  seed: v.nullish(Int),
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

export type ChatCompletionRequest = v.InferOutput<typeof ChatCompletionRequestSchema>;
export type CompletionRequest = v.InferOutput<typeof CompletionRequestSchema>;
export type ChatMessageInput = v.InferOutput<typeof ChatMessageSchema>;
