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

/** A field with its meaning, for the OpenAPI document (defaults come from the schema). */
const doc = <S extends v.GenericSchema>(schema: S, text: string) => v.pipe(schema, v.description(text));

const TextPart = v.looseObject({ type: v.literal("text"), text: v.string() });

export const ChatMessageSchema = v.looseObject({
  role: doc(
    v.picklist(["system", "developer", "user", "assistant", "tool"]),
    "Who wrote the message; developer is the system role of older templates",
  ),
  content: doc(
    v.nullish(v.union([v.string(), v.array(TextPart)])),
    "The text, or text parts joined with newlines (other part types are refused)",
  ),
  name: doc(v.optional(v.string()), "The author's name, passed to the chat template"),
  tool_call_id: doc(
    v.optional(v.string()),
    "For a tool message: the call it answers, passed to the template",
  ),
  tool_calls: doc(
    v.optional(v.array(v.unknown())),
    "For an assistant message: its tool calls, passed to the template",
  ),
});

const JsonSchemaValue = v.union([v.record(v.string(), v.unknown()), v.boolean()]);

/** OpenAI's response_format: free text, any JSON object, or JSON that validates against a schema. */
export const ResponseFormatSchema = v.variant("type", [
  v.looseObject({ type: v.literal("text") }),
  v.looseObject({ type: v.literal("json_object") }),
  v.looseObject({
    type: v.literal("json_schema"),
    json_schema: v.looseObject({
      name: doc(v.string(), "The schema's name (reported back in nothing; OpenAI requires it)"),
      description: doc(v.optional(v.string()), "What the schema is for (not shown to the model)"),
      schema: doc(
        JsonSchemaValue,
        "The JSON Schema (2020-12; draft-07 and draft-04 read too) the output must validate against, enforced token by token; keywords that cannot be enforced are a 400 naming each",
      ),
      strict: doc(v.nullish(v.boolean()), "Accepted either way: the schema is always enforced exactly"),
    }),
  }),
]);

/** vLLM's structured_outputs: exactly one of its fields. */
export const StructuredOutputsSchema = v.looseObject({
  json: doc(v.optional(v.union([JsonSchemaValue, v.string()])), "A JSON Schema (object, or as JSON text)"),
  regex: doc(v.optional(v.string()), "A regular expression (ECMAScript subset) the whole output matches"),
  choice: doc(
    v.optional(v.pipe(v.array(v.string()), v.minLength(1))),
    "The output is exactly one of these strings",
  ),
  json_object: doc(v.optional(v.boolean()), "true: any JSON object"),
});

/** Fields chat and completions share. */
const Generation = {
  model: doc(
    v.pipe(v.string(), v.minLength(1)),
    "The base model (any of its served names) or an adapter of the LoRA dir by name",
  ),
  max_tokens: doc(
    v.nullish(v.pipe(Int, v.minValue(1))),
    "Most tokens to generate; absent: up to the context length",
  ),
  temperature: doc(v.nullish(between(0, 2)), "Sampling temperature; 0 is greedy. Absent: 1"),
  top_p: doc(
    v.nullish(v.pipe(v.number(), v.gtValue(0), v.maxValue(1))),
    "Nucleus sampling: the smallest set of tokens whose probability reaches top_p. Absent: 1 (off)",
  ),
  n: doc(
    v.optional(v.pipe(Int, v.minValue(1), v.maxValue(16)), 1),
    "Choices per prompt; choice i uses seed + i",
  ),
  stop: doc(
    v.nullish(v.union([v.string(), v.pipe(v.array(v.string()), v.maxLength(16))])),
    "Text that ends a choice (not included), even across tokens",
  ),
  // The engine's seed is a uint64: a seed outside [0, 2^64) is refused, never wrapped.
  seed: doc(
    v.nullish(v.pipe(Int, v.minValue(0), v.ltValue(2 ** 64))),
    "Makes sampling reproducible; absent: random",
  ),
  presence_penalty: doc(
    v.nullish(between(-2, 2)),
    "Subtracted from the logit of every token already generated. Absent: 0",
  ),
  frequency_penalty: doc(
    v.nullish(between(-2, 2)),
    "Subtracted per occurrence from the logit of tokens already generated. Absent: 0",
  ),
  stream: doc(v.optional(v.boolean(), false), "Server-sent events (or MessagePack records) as tokens come"),
  stream_options: doc(
    v.nullish(v.looseObject({ include_usage: v.optional(v.boolean()) })),
    "include_usage: a last chunk with the token counts",
  ),
  user: doc(v.optional(v.string()), "An end-user id; accepted and not used"),
  // multilora and vLLM extensions
  lora_model: doc(
    v.nullish(v.string()),
    "multilora: the adapter to use, by name (llgtrt's field); or name it in model",
  ),
  load_lora_weights: doc(
    v.optional(v.picklist(["auto", "always", "never"]), "auto"),
    "multilora: auto sends the adapter's weights only when the engine may not have them (and retries once with them); always with every request; never: a miss is a 409 lora_not_cached",
  ),
  lora_scale: doc(
    v.optional(between(0, 100), 1),
    "multilora: multiplies the adapter's contribution; 0 is the base model",
  ),
  top_k: doc(v.nullish(v.pipe(Int, v.minValue(-1))), "Sample among the k most likely tokens; 0 or -1: off"),
  min_p: doc(
    v.nullish(between(0, 1)),
    "Drop tokens less likely than min_p times the most likely one. Absent: 0 (off)",
  ),
  repetition_penalty: doc(
    v.nullish(v.pipe(v.number(), v.gtValue(0))),
    "Divides positive and multiplies negative logits of tokens seen in the prompt or output. Absent: 1 (off)",
  ),
  return_token_ids: doc(
    v.optional(v.boolean(), false),
    "multilora and vLLM: add the token ids of the prompt and of each choice",
  ),
  logit_bias: doc(
    v.nullish(v.record(v.string(), between(-100, 100))),
    "Token id (as a string key) to a bias in [-100, 100] added to its logit before sampling, at most 300 entries; -100 bans the token, 100 makes it the pick wherever it is allowed (an output constraint still wins). Ids outside the vocabulary are a 400",
  ),
  response_format: doc(
    v.nullish(ResponseFormatSchema),
    "Structured output: text (default), json_object (any JSON object) or json_schema; enforced on every token, so a choice that finishes with stop always parses and validates",
  ),
  structured_outputs: doc(
    v.nullish(StructuredOutputsSchema),
    "vLLM: structured output as json (a schema), regex or choice; one of them",
  ),
  guided_json: doc(
    v.nullish(v.union([JsonSchemaValue, v.string()])),
    "vLLM (older): structured_outputs.json",
  ),
  guided_regex: doc(v.nullish(v.string()), "vLLM (older): structured_outputs.regex"),
  guided_choice: doc(
    v.nullish(v.pipe(v.array(v.string()), v.minLength(1))),
    "vLLM (older): structured_outputs.choice",
  ),
};

/** An OpenAI function tool. */
export const ToolSchema = v.looseObject({
  type: doc(v.literal("function"), "Only function tools"),
  function: v.looseObject({
    name: doc(
      v.pipe(v.string(), v.regex(/^[A-Za-z0-9_.-]{1,64}$/)),
      "The function's name (letters, digits, _ . -; up to 64)",
    ),
    description: doc(v.optional(v.string()), "What it does, shown to the model through the chat template"),
    parameters: doc(
      v.optional(v.record(v.string(), v.unknown())),
      "A JSON Schema of its arguments, enforced on every call the model writes (keywords that cannot be enforced are a 400 naming each); absent: any object",
    ),
    strict: doc(v.nullish(v.boolean()), "Accepted either way: arguments are always enforced exactly"),
  }),
});

export const ChatCompletionRequestSchema = v.looseObject({
  ...Generation,
  tools: doc(
    v.nullish(v.pipe(v.array(ToolSchema), v.maxLength(128))),
    "Functions the model may call; the calls come back as tool_calls (finish_reason tool_calls)",
  ),
  tool_choice: doc(
    v.nullish(
      v.union([
        v.picklist(["none", "auto", "required"]),
        v.looseObject({ type: v.literal("function"), function: v.looseObject({ name: v.string() }) }),
      ]),
    ),
    "none: no calls; auto (the default with tools): text or calls, a started call is constrained to a valid one; required: only calls; a named function: only calls to it",
  ),
  parallel_tool_calls: doc(
    v.optional(v.boolean(), true),
    "Several calls in one answer (required and named choices)",
  ),
  messages: doc(
    v.pipe(v.array(ChatMessageSchema), v.minLength(1)),
    "The conversation, rendered by the model's chat template",
  ),
  max_completion_tokens: doc(
    v.nullish(v.pipe(Int, v.minValue(1))),
    "Most tokens to generate (wins over max_tokens)",
  ),
  logprobs: doc(v.optional(v.boolean(), false), "Report each chosen token's log-probability"),
  top_logprobs: doc(
    v.nullish(v.pipe(Int, v.minValue(0), v.maxValue(20))),
    "With logprobs: also the k most likely tokens at each position",
  ),
});

const TokenIds = v.pipe(v.array(v.pipe(Int, v.minValue(0))), v.minLength(1));

export const CompletionRequestSchema = v.looseObject({
  ...Generation,
  prompt: doc(
    v.union([
      v.string(),
      v.pipe(v.array(v.string()), v.minLength(1)),
      TokenIds,
      v.pipe(v.array(TokenIds), v.minLength(1)),
    ]),
    "Text (tokenized with the model's special tokens), texts, token ids (used as given) or lists of token ids; each prompt gets n choices",
  ),
  logprobs: doc(
    v.nullish(v.pipe(Int, v.minValue(0), v.maxValue(20))),
    "Report each chosen token's log-probability and the k most likely; absent: none",
  ),
  echo: doc(v.optional(v.boolean(), false), "Put the prompt's text before the generated text"),
});

export const LoadAdapterRequestSchema = v.looseObject({
  pin: doc(v.optional(v.boolean(), false), "Keep the adapter in the engine's cache until unloaded"),
});

/** vLLM's runtime LoRA routes: POST /v1/load_lora_adapter and /v1/unload_lora_adapter. */
const LoraName = v.pipe(v.string(), v.minLength(1, "Both 'lora_name' and 'lora_path' must be provided."));
export const LoadLoraAdapterRequestSchema = v.looseObject({
  lora_name: doc(LoraName, "The name requests will use in model or lora_model"),
  lora_path: doc(
    v.pipe(v.string(), v.minLength(1, "Both 'lora_name' and 'lora_path' must be provided.")),
    "A TensorRT-LLM adapter file or a PEFT folder inside the LoRA dir or an --allowed-lora-paths dir",
  ),
});
export const UnloadLoraAdapterRequestSchema = v.looseObject({
  lora_name: doc(v.pipe(v.string(), v.minLength(1)), "The adapter to unload"),
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
