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
import type { ChatMessage, ChatTemplate, ChatTool } from "../engine/chat-template.ts";
import type { GenerateRequest } from "../engine/engine.ts";
import type { Tokenizer } from "../engine/tokenizer.ts";
import { MultiloraError } from "../errors.ts";
import type { AdapterVersion } from "../lora/registry.ts";
import type { ConstraintSpec } from "../structured/constraint.ts";
import type { ToolMode } from "../structured/tool-grammar.ts";
import { FAMILIES, type FamilyName as ToolFamily } from "../tools/families.ts";
import { toolPrompt } from "../tools/render.ts";
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
  /** Chat with tools: the calls are parsed out of each choice's text; null: none. */
  readonly tools: TaskTools | null;
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
  /** How this model writes tool calls (detected from its chat template, or --tool-call-format). */
  toolFamily: ToolFamily;
  /** Token ids the model knows: [0, vocabSize); a prompt id outside is a 400, never wrapped to int32. */
  vocabSize: number;
  requestTimeoutMs: number;
  /** The engine applies logit_bias (its capability); false: a request with logit_bias is a 400. */
  logitBias: boolean;
}

/**
 * Fields of OpenAI's and vLLM's APIs that would change the output and that this server does not implement:
 * refused with a 400 naming them, never accepted and ignored. A field is accepted when its value is one of
 * `harmless` (what asks for no change).
 */
const UNSUPPORTED: Record<string, { harmless?: (value: unknown) => boolean; what: string }> = {
  functions: { harmless: (v) => Array.isArray(v) && v.length === 0, what: "function calling" },
  function_call: { harmless: (v) => v === "none" || v === "auto", what: "function calling" },
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
  const tools = toolsOf(body, settings.toolFamily);
  // OpenAI's "developer" role is the system role of older models' templates.
  let messages = body.messages.map((m) =>
    m.role === "developer" ? { ...m, role: "system" } : m,
  ) as ChatMessage[];
  let shown: readonly ChatTool[] | undefined;
  if (tools) {
    // tool_choice none: the model is not shown the tools (nor may it call them); past calls still render
    const prompt = toolPrompt(
      settings.chatTemplate,
      FAMILIES[tools.family],
      messages,
      tools.mode === "none" ? [] : tools.tools,
    );
    messages = prompt.messages;
    shown = tools.mode === "none" ? undefined : prompt.tools;
  }
  const rendered = settings.chatTemplate.render(messages, {
    addGenerationPrompt: true,
    ...(shown ? { tools: shown } : {}),
  });
  // The template wrote every special token the model expects: no second BOS.
  const prompt = settings.tokenizer.encode(rendered, { addSpecialTokens: false });
  const topLogprobs = body.logprobs ? (body.top_logprobs ?? 0) : null;
  return buildTask(settings, "chat", body, target, [prompt], body.max_completion_tokens ?? body.max_tokens, {
    topLogprobs,
    echo: false,
    tools,
  });
}

/** The request's tools, checked (400 naming the field): unique names, a tool_choice that names one. */
function toolsOf(body: ChatCompletionRequest, family: ToolFamily): TaskTools | null {
  const list = body.tools ?? [];
  const choice = body.tool_choice ?? null;
  if (list.length === 0) {
    if (choice === "required" || (choice !== null && typeof choice === "object")) {
      throw new MultiloraError(`tool_choice ${JSON.stringify(choice)} needs tools`, {
        code: "invalid_request",
        param: "tool_choice",
      });
    }
    return null; // "none" / "auto" without tools: plain chat
  }
  const names = new Set<string>();
  for (const t of list) {
    if (names.has(t.function.name)) {
      throw new MultiloraError(`two tools are named "${t.function.name}"`, {
        code: "invalid_request",
        param: "tools",
      });
    }
    names.add(t.function.name);
  }
  let mode: ToolMode = "auto";
  if (choice === "none" || choice === "required") mode = choice;
  else if (choice !== null && typeof choice === "object") {
    if (!names.has(choice.function.name)) {
      throw new MultiloraError(`tool_choice names "${choice.function.name}", which is not one of the tools`, {
        code: "invalid_request",
        param: "tool_choice",
      });
    }
    mode = { name: choice.function.name };
  }
  return Object.freeze({ family, tools: list as ChatTool[], mode, parallel: body.parallel_tool_calls });
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

/** A chat request's tools: what the response parses out of the text, and what the constraint allows. */
export interface TaskTools {
  readonly family: ToolFamily;
  readonly tools: readonly ChatTool[];
  readonly mode: ToolMode;
  readonly parallel: boolean;
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
export function constraintOf(body: Common, tools: TaskTools | null): TaskConstraint | null {
  const found: { param: string; spec: ConstraintSpec }[] = [];
  if (tools) {
    const spec: ConstraintSpec = {
      kind: "tool_calls",
      family: tools.family,
      tools: tools.tools.map((t) => ({ name: t.function.name, parameters: t.function.parameters })),
      mode: tools.mode,
      parallel: tools.parallel,
    };
    found.push({ param: "tools", spec });
  }
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
  extra: { topLogprobs: number | null; echo: boolean; tools?: TaskTools | null },
): GenerationTask {
  const endIds = Int32Array.from(settings.tokenizer.eosTokenIds);
  const logitBias = logitBiasOf(body.logit_bias, settings); // (logit_bias: one for every choice)
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
      if (logitBias) request.logitBias = logitBias;
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
    constraint: constraintOf(body, extra.tools ?? null),
    tools: extra.tools ?? null,
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

// --- logit_bias ---------------------------------------------------------------------------------------

/** OpenAI's limit on logit_bias entries. */
export const MAX_LOGIT_BIAS = 300;

/**
 * The request's logit_bias as the engine takes it (ids and values), or null when absent or empty. 400s:
 * a key that is not a token id of this model (decimal, no sign or leading zeros: "01" would be a second
 * key for token 1), more than 300 entries (invalid_request), a backend that cannot apply it
 * (unsupported_field). Values are the schema's ([-100, 100]).
 */
export function logitBiasOf(
  bias: Readonly<Record<string, number>> | null | undefined,
  settings: Pick<TaskSettings, "vocabSize" | "logitBias">,
): { ids: Int32Array; values: Float32Array } | null {
  if (bias === null || bias === undefined) return null;
  const keys = Object.keys(bias);
  if (keys.length === 0) return null;
  if (!settings.logitBias) {
    throw new MultiloraError("this backend cannot apply logit_bias; leave logit_bias out", {
      code: "unsupported_field",
      param: "logit_bias",
    });
  }
  if (keys.length > MAX_LOGIT_BIAS) {
    throw new MultiloraError(`logit_bias has ${keys.length} entries; at most ${MAX_LOGIT_BIAS} are allowed`, {
      code: "invalid_request",
      param: "logit_bias",
    });
  }
  const limit = settings.vocabSize > 0 ? settings.vocabSize : 2 ** 31;
  const ids = new Int32Array(keys.length);
  const values = new Float32Array(keys.length);
  keys.forEach((key, i) => {
    const id = /^(0|[1-9][0-9]*)$/.test(key) ? Number(key) : Number.NaN;
    if (!Number.isSafeInteger(id)) {
      throw new MultiloraError(
        `logit_bias key ${JSON.stringify(key)} is not a token id (a non-negative integer in decimal, as a string)`,
        { code: "invalid_request", param: "logit_bias" },
      );
    }
    if (id >= limit) {
      throw new MultiloraError(
        `logit_bias key "${key}" is not a token of this model: its token ids are 0 to ${limit - 1}${settings.vocabSize > 0 ? ` (vocab_size ${settings.vocabSize})` : ""}`,
        { code: "invalid_request", param: "logit_bias" },
      );
    }
    ids[i] = id;
    values[i] = bias[key] as number;
  });
  return { ids, values };
}
