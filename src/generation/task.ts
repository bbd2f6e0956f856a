/**
 * One request becomes one immutable task, built here once: the prompt token ids of every choice, its
 * sampling, the adapter version and load mode, the limits, the stop rules and what the response must
 * carry. The task travels unchanged to admission, the engine and the response codecs; the engine request
 * of each choice is complete but for the adapter part, which admission adds per the load mode.
 *
 * Adding a request field: its schema (src/api/schemas.ts), its place in the task here, and, if the engine
 * needs it, the ABI (src/engine/engine.ts `GenerateRequest`, ffi/include/multilora.h). Nothing else.
 */
import type { ChatCompletionRequest, CompletionRequest } from "../api/schemas.ts";
import type { ChatMessage, ChatTemplate } from "../engine/chat-template.ts";
import type { GenerateRequest } from "../engine/engine.ts";
import type { Tokenizer } from "../engine/tokenizer.ts";
import { MultiloraError } from "../errors.ts";
import type { AdapterVersion } from "../lora/registry.ts";
import type { ConstraintSpec } from "../structured/constraint.ts";
import type { Target } from "./target.ts";

export type LoadMode = "auto" | "always" | "never";

export interface TaskChoice {
  /** Its place in the response's `choices`. */
  readonly index: number;
  /** Which of the request's prompts it continues (completions may send several). */
  readonly promptIndex: number;
  /** What the engine runs, without the adapter part. */
  readonly request: Readonly<GenerateRequest>;
}

/** What the response carries besides the generated text. */
export interface TaskOutput {
  readonly stream: boolean;
  readonly includeUsage: boolean;
  readonly returnTokenIds: boolean;
  /** Completions: the prompt's text comes before the generated text. */
  readonly echo: boolean;
}

export interface GenerationTask {
  readonly kind: "chat" | "completion";
  /** The name responses echo. */
  readonly model: string;
  readonly adapter: AdapterVersion | null;
  readonly loadMode: LoadMode;
  readonly loraScale: number;
  /** Every prompt as token ids, in request order. */
  readonly prompts: readonly (readonly number[])[];
  readonly promptTokens: number;
  readonly choices: readonly TaskChoice[];
  /** Text that ends a choice (not included in it), even when it spans tokens. */
  readonly stop: readonly string[];
  /** null: no logprobs; k: the chosen token's and the k most likely. */
  readonly topLogprobs: number | null;
  /** What every choice's output must be, and the field that asked (response_format, ...); null: free text. */
  readonly constraint: TaskConstraint | null;
  /** A generation is cut after this long (finish_reason "length"); 0 = never. */
  readonly timeoutMs: number;
  readonly output: TaskOutput;
}

/** What building a task needs to know of the model and the server. */
export interface TaskSettings {
  tokenizer: Tokenizer;
  chatTemplate: ChatTemplate;
  /** Prompt + generated tokens per sequence. */
  maxSeqLen: number;
  /** Token ids the model knows: [0, vocabSize); a prompt id outside is a 400, never wrapped to int32. */
  vocabSize: number;
  requestTimeoutMs: number;
}

/**
 * Fields of OpenAI's and vLLM's APIs that would change the output and that this server does not implement:
 * refused with a 400 naming them, never accepted and ignored. A field is accepted when its value is one of
 * `harmless` (what asks for no change).
 */
const UNSUPPORTED: Record<string, { harmless?: (value: unknown) => boolean; what: string }> = {
  tools: { harmless: (v) => Array.isArray(v) && v.length === 0, what: "tool calling" },
  // "auto" without tools calls nothing; tools themselves are refused.
  tool_choice: { harmless: (v) => v === "none" || v === "auto", what: "tool calling" },
  functions: { harmless: (v) => Array.isArray(v) && v.length === 0, what: "function calling" },
  function_call: { harmless: (v) => v === "none" || v === "auto", what: "function calling" },
  logit_bias: {
    harmless: (v) => typeof v === "object" && v !== null && Object.keys(v).length === 0,
    what: "logit_bias",
  },
  modalities: {
    harmless: (v) => Array.isArray(v) && v.every((m) => m === "text"),
    what: "output modalities other than text",
  },
  audio: { what: "audio output" },
  prediction: { what: "predicted outputs" },
  reasoning_effort: { what: "reasoning effort" },
  web_search_options: { what: "web search" },
  best_of: { harmless: (v) => v === 1, what: "best_of" },
  suffix: { harmless: (v) => v === "" || v === null, what: "suffix (insertion)" },
  guided_grammar: { what: "grammars (use response_format or structured_outputs json, regex or choice)" },
  ignore_eos: { harmless: (v) => v === false, what: "ignore_eos" },
  min_tokens: { harmless: (v) => v === 0, what: "min_tokens" },
  stop_token_ids: { harmless: (v) => Array.isArray(v) && v.length === 0, what: "stop_token_ids" },
  bad_words: { harmless: (v) => Array.isArray(v) && v.length === 0, what: "bad_words" },
  allowed_token_ids: { what: "allowed_token_ids" },
  use_beam_search: { harmless: (v) => v === false, what: "beam search" },
  prompt_logprobs: { what: "prompt_logprobs" },
  truncate_prompt_tokens: { what: "truncate_prompt_tokens" },
  guided_decoding_backend: { what: "a choice of structured-output backend (there is one)" },
  guided_whitespace_pattern: { what: "a whitespace pattern for structured output" },
  chat_template: { what: "a chat template of the request's own" },
  chat_template_kwargs: {
    harmless: (v) => typeof v === "object" && v !== null && Object.keys(v).length === 0,
    what: "chat_template_kwargs",
  },
  add_generation_prompt: { harmless: (v) => v === true, what: "add_generation_prompt false" },
  continue_final_message: { harmless: (v) => v === false, what: "continue_final_message" },
  documents: { what: "documents for the chat template" },
  skip_special_tokens: { harmless: (v) => v === true, what: "skip_special_tokens false" },
  include_stop_str_in_output: { harmless: (v) => v === false, what: "include_stop_str_in_output" },
  length_penalty: { harmless: (v) => v === 1, what: "length_penalty" },
};

/** 400 naming every field of `body` that asks for something this server does not do. */
function refuseUnsupported(body: Record<string, unknown>): void {
  const refused = Object.keys(body).filter((key) => {
    const rule = UNSUPPORTED[key];
    const value = body[key];
    return rule !== undefined && value !== undefined && value !== null && !rule.harmless?.(value);
  });
  if (refused.length === 0) return;
  const list = refused.map((k) => `${k} (${UNSUPPORTED[k]?.what})`).join(", ");
  throw new MultiloraError(`not supported by this server: ${list}; leave these fields out`, {
    code: "unsupported_field",
    param: refused[0],
  });
}

type Common = ChatCompletionRequest | CompletionRequest;

function stopStrings(stop: Common["stop"]): string[] {
  if (stop === null || stop === undefined) return [];
  return typeof stop === "string" ? [stop] : [...stop];
}

/** The chat request as a task: the template renders the conversation, the engine continues it. */
export function buildChatTask(
  settings: TaskSettings,
  body: ChatCompletionRequest,
  target: Target,
): GenerationTask {
  refuseUnsupported(body);
  // OpenAI's "developer" role is the system role of older models' templates.
  const messages = body.messages.map((m) => (m.role === "developer" ? { ...m, role: "system" } : m));
  const rendered = settings.chatTemplate.render(messages as ChatMessage[], { addGenerationPrompt: true });
  // The template wrote every special token the model expects: no second BOS.
  const prompt = settings.tokenizer.encode(rendered, { addSpecialTokens: false });
  const topLogprobs = body.logprobs ? (body.top_logprobs ?? 0) : null;
  return buildTask(settings, "chat", body, target, [prompt], body.max_completion_tokens ?? body.max_tokens, {
    topLogprobs,
    echo: false,
  });
}

/** Token-id prompts are used as given; text is tokenized with the model's special tokens (BOS). */
export function buildCompletionTask(
  settings: TaskSettings,
  body: CompletionRequest,
  target: Target,
): GenerationTask {
  refuseUnsupported(body);
  const { tokenizer } = settings;
  const p = body.prompt;
  const prompts =
    typeof p === "string"
      ? [tokenizer.encode(p, { addSpecialTokens: true })]
      : p.every((x) => typeof x === "number")
        ? [p as number[]]
        : (p as (string | number[])[]).map((x) =>
            typeof x === "string" ? tokenizer.encode(x, { addSpecialTokens: true }) : x,
          );
  return buildTask(settings, "completion", body, target, prompts, body.max_tokens, {
    topLogprobs: body.logprobs ?? null,
    echo: body.echo,
  });
}

/** 400 naming the first id of `prompt` that is not a token of the model (the engine takes int32 ids). */
function checkTokenIds(prompt: readonly number[], vocabSize: number, promptIndex: number | null): void {
  const limit = vocabSize > 0 ? vocabSize : 2 ** 31; // a backend that does not know its vocab: int32 still
  const bad = prompt.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= limit);
  if (bad < 0) return;
  const where = promptIndex === null ? `prompt[${bad}]` : `prompt[${promptIndex}][${bad}]`;
  throw new MultiloraError(
    `${where} is token id ${prompt[bad]}; this model's token ids are 0 to ${limit - 1}${vocabSize > 0 ? ` (vocab_size ${vocabSize})` : ""}`,
    { code: "invalid_token_id", param: "prompt" },
  );
}

export interface TaskConstraint {
  readonly spec: ConstraintSpec;
  /** The request field it came from, named in errors. */
  readonly param: string;
}

/** vLLM structured_outputs fields this server enforces. */
const STRUCTURED_OUTPUTS_FIELDS = ["json", "regex", "choice", "json_object"];

function jsonSchemaOf(value: unknown, param: string): unknown {
  if (typeof value !== "string") return value;
  try {
    return JSON.parse(value);
  } catch {
    throw new MultiloraError(`${param} is a string that is not JSON text of a schema`, {
      code: "invalid_schema",
      param,
    });
  }
}

/** The request's output constraint (response_format, structured_outputs, guided_*), or null; one at most. */
export function constraintOf(body: Common): TaskConstraint | null {
  const found: { param: string; spec: ConstraintSpec }[] = [];
  const rf = body.response_format;
  if (rf?.type === "json_object") found.push({ param: "response_format", spec: { kind: "json_object" } });
  if (rf?.type === "json_schema") {
    found.push({ param: "response_format", spec: { kind: "json_schema", schema: rf.json_schema.schema } });
  }
  const so = body.structured_outputs;
  if (so) {
    const extra = Object.keys(so).filter(
      (k) => !STRUCTURED_OUTPUTS_FIELDS.includes(k) && (so as Record<string, unknown>)[k] != null,
    );
    if (extra.length > 0) {
      throw new MultiloraError(
        `not supported by this server: structured_outputs.${extra.join(", structured_outputs.")}; use json, regex, choice or json_object`,
        { code: "unsupported_field", param: `structured_outputs.${extra[0]}` },
      );
    }
    if (so.json !== undefined)
      found.push({
        param: "structured_outputs.json",
        spec: { kind: "json_schema", schema: jsonSchemaOf(so.json, "structured_outputs.json") },
      });
    if (so.regex !== undefined)
      found.push({ param: "structured_outputs.regex", spec: { kind: "regex", pattern: so.regex } });
    if (so.choice !== undefined)
      found.push({ param: "structured_outputs.choice", spec: { kind: "choice", choices: so.choice } });
    if (so.json_object)
      found.push({ param: "structured_outputs.json_object", spec: { kind: "json_object" } });
  }
  if (body.guided_json !== null && body.guided_json !== undefined) {
    found.push({
      param: "guided_json",
      spec: { kind: "json_schema", schema: jsonSchemaOf(body.guided_json, "guided_json") },
    });
  }
  if (body.guided_regex !== null && body.guided_regex !== undefined)
    found.push({ param: "guided_regex", spec: { kind: "regex", pattern: body.guided_regex } });
  if (body.guided_choice !== null && body.guided_choice !== undefined)
    found.push({ param: "guided_choice", spec: { kind: "choice", choices: body.guided_choice } });
  if (found.length > 1) {
    throw new MultiloraError(
      `one output constraint at a time: ${found.map((f) => f.param).join(" and ")} are both set`,
      {
        code: "invalid_request",
        param: found[1]?.param,
      },
    );
  }
  const only = found[0];
  if (!only) return null;
  if (stopStrings(body.stop).length > 0) {
    throw new MultiloraError(
      `stop cannot be combined with ${only.param}: a stop string could cut the output short of its format; leave stop out (the output ends where the format is complete)`,
      { code: "invalid_request", param: "stop" },
    );
  }
  return Object.freeze({ spec: Object.freeze(only.spec), param: only.param });
}

function buildTask(
  settings: TaskSettings,
  kind: GenerationTask["kind"],
  body: Common,
  target: Target,
  prompts: number[][],
  maxTokens: number | null | undefined,
  extra: { topLogprobs: number | null; echo: boolean },
): GenerationTask {
  const endIds = Int32Array.from(settings.tokenizer.eosTokenIds);
  const choices: TaskChoice[] = [];
  prompts.forEach((prompt, promptIndex) => {
    checkTokenIds(prompt, settings.vocabSize, prompts.length > 1 ? promptIndex : null);
    const room = settings.maxSeqLen - prompt.length;
    if (room <= 0 || (maxTokens !== null && maxTokens !== undefined && maxTokens > room)) {
      throw new MultiloraError(
        `this model's context is ${settings.maxSeqLen} tokens; the prompt has ${prompt.length}${maxTokens ? ` and max_tokens asks for ${maxTokens} more` : ""}`,
        { code: "context_length_exceeded", param: "max_tokens" },
      );
    }
    const ids = Int32Array.from(prompt);
    for (let i = 0; i < body.n; i++) {
      const request: GenerateRequest = {
        prompt: ids,
        maxNewTokens: maxTokens ?? room,
        temperature: body.temperature ?? 1,
        topP: body.top_p ?? undefined,
        topK: body.top_k !== null && body.top_k !== undefined && body.top_k > 0 ? body.top_k : undefined,
        minP: body.min_p ?? undefined,
        repetitionPenalty: body.repetition_penalty ?? undefined,
        frequencyPenalty: body.frequency_penalty ?? undefined,
        presencePenalty: body.presence_penalty ?? undefined,
        // Choice i uses seed + i, so n choices differ and each is reproducible.
        seed: body.seed === null || body.seed === undefined ? undefined : BigInt(body.seed) + BigInt(i),
        endIds,
        topLogprobs: extra.topLogprobs ?? undefined,
      };
      choices.push(Object.freeze({ index: choices.length, promptIndex, request: Object.freeze(request) }));
    }
  });
  return Object.freeze({
    kind,
    model: target.model,
    adapter: target.adapter ?? null,
    loadMode: body.load_lora_weights,
    loraScale: body.lora_scale,
    prompts,
    promptTokens: prompts.reduce((sum, p) => sum + p.length, 0),
    choices: Object.freeze(choices),
    stop: Object.freeze(stopStrings(body.stop)),
    constraint: constraintOf(body),
    topLogprobs: extra.topLogprobs,
    timeoutMs: settings.requestTimeoutMs,
    output: Object.freeze({
      stream: body.stream,
      includeUsage: body.stream_options?.include_usage ?? false,
      returnTokenIds: body.return_token_ids,
      echo: extra.echo,
    }),
  });
}
