/**
 * The model's chat template: the Jinja program that turns OpenAI chat messages into one prompt string,
 * rendered with @huggingface/jinja as transformers' `apply_chat_template` does (trim_blocks and
 * lstrip_blocks on; `bos_token`, `eos_token`, `add_generation_prompt`, `messages` and `tools` set).
 *
 * It comes from `chat_template.jinja` in the model folder when that file exists, else from the
 * `chat_template` of `tokenizer_config.json`.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { MultiloraError } from "../errors.ts";
import { fileError } from "../formats/files.ts";
import { readTokenizerConfig, specialTokenContent, type TokenizerConfig } from "./tokenizer.ts";

export type ChatRole = "system" | "user" | "assistant" | "tool";

export interface ChatTextPart {
  type: "text";
  text: string;
}

export interface ChatToolCall {
  id: string;
  type: "function";
  /** `arguments` is the JSON text OpenAI sends; templates get it parsed into an object. */
  function: { name: string; arguments: string };
}

/** An OpenAI chat message. Other keys are passed to the template as they are. */
export interface ChatMessage {
  role: ChatRole;
  /** A string, or text parts that are joined with "\n"; null or absent is "". */
  content?: string | readonly ChatTextPart[] | null;
  name?: string;
  tool_calls?: readonly ChatToolCall[];
  tool_call_id?: string;
  [key: string]: unknown;
}

/** An OpenAI tool definition, passed to the template's `tools` as it is. */
export interface ChatTool {
  type: "function";
  function: {
    name: string;
    description?: string;
    parameters?: Record<string, unknown>;
    [key: string]: unknown;
  };
}

export interface RenderOptions {
  /** End the prompt with the assistant turn's opening (`<|im_start|>assistant\n`). */
  addGenerationPrompt: boolean;
  /** The template's `bos_token` and `eos_token`; by default those of tokenizer_config.json, else "". */
  bosToken?: string | null;
  eosToken?: string | null;
  /** The template's `tools`; absent, the template sees `tools` undefined. */
  tools?: readonly ChatTool[];
  /** More template variables (OpenAI's `chat_template_kwargs`), set before the ones above. */
  extra?: Record<string, unknown>;
}

interface Templates {
  default: Template;
  /** tokenizer_config.json's template named "tool_use", used when a request has tools. */
  toolUse: Template | null;
}

const SAMPLE_CONVERSATION: readonly ChatMessage[] = [
  { role: "user", content: "Hello!" },
  { role: "assistant", content: "Hi! How can I help?" },
  { role: "user", content: "What is 2 + 2?" },
];

export class ChatTemplate {
  /** Where the template came from (a file, with the field for tokenizer_config.json); null when none. */
  readonly source: string | null;
  /** The default template's text; null when the model has none. */
  readonly text: string | null;
  /** The text of the template used for requests with tools (the "tool_use" one, else the default). */
  readonly toolText: string | null;
  readonly #templates: Templates | null;
  readonly #modelDir: string;
  readonly #bosToken: string | null;
  readonly #eosToken: string | null;

  constructor(
    modelDir: string,
    template: { source: string; text: string; toolUse?: { source: string; text: string } | null } | null,
    defaults: { bosToken?: string | null; eosToken?: string | null } = {},
  ) {
    this.#modelDir = modelDir;
    this.#bosToken = defaults.bosToken ?? null;
    this.#eosToken = defaults.eosToken ?? null;
    this.source = template?.source ?? null;
    this.text = template?.text ?? null;
    this.toolText = template?.toolUse?.text ?? this.text;
    this.#templates = template && {
      default: parseTemplate(template.text, template.source),
      toolUse: template.toolUse ? parseTemplate(template.toolUse.text, template.toolUse.source) : null,
    };
  }

  /** Whether the model has a chat template (without one, `render` throws). */
  get available(): boolean {
    return this.#templates !== null;
  }

  /** The prompt for `messages`. Throws a MultiloraError (400) when the template rejects them. */
  render(messages: readonly ChatMessage[], options: RenderOptions): string {
    const templates = this.#templates;
    if (templates === null || this.source === null) {
      throw new MultiloraError(
        `the model in ${this.#modelDir} has no chat template (no chat_template.jinja, and no "chat_template" ` +
          "in tokenizer_config.json), so it cannot serve chat completions. Use /v1/completions with a " +
          "prompt in the model's own format, or add a chat_template.jinja to the model folder.",
        { code: "no_chat_template", param: "messages" },
      );
    }
    const context: Record<string, unknown> = {
      ...options.extra,
      messages: messages.map(templateMessage),
      add_generation_prompt: options.addGenerationPrompt,
      bos_token: options.bosToken ?? this.#bosToken ?? "",
      eos_token: options.eosToken ?? this.#eosToken ?? "",
    };
    if (options.tools !== undefined) context.tools = options.tools;
    const template = options.tools !== undefined && templates.toolUse ? templates.toolUse : templates.default;
    try {
      return template.render(context);
    } catch (e) {
      throw new MultiloraError(
        `the chat template (${this.source}) cannot render these messages: ${(e as Error).message ?? String(e)}`,
        { code: "chat_template_error", param: "messages", cause: e },
      );
    }
  }

  /**
   * Renders a sample conversation once; throws a MultiloraError naming the template file when that
   * fails. Does nothing when there is no template (chat requests then get a clear error).
   */
  checkTemplate(): void {
    if (this.#templates === null) return;
    let prompt: string;
    try {
      prompt = this.render(SAMPLE_CONVERSATION, { addGenerationPrompt: true });
    } catch (e) {
      const cause = (e as { cause?: unknown }).cause ?? e;
      throw new MultiloraError(
        `${this.source}: the chat template fails on a sample conversation (user, assistant, user): ` +
          `${(cause as Error).message ?? String(cause)}`,
        { code: "invalid_chat_template", cause },
      );
    }
    const last = SAMPLE_CONVERSATION.at(-1)?.content as string;
    if (!prompt.includes(last)) {
      throw new MultiloraError(
        `${this.source}: the chat template's output for a sample conversation does not contain the last ` +
          `message (${JSON.stringify(last)}); it rendered ${JSON.stringify(prompt.slice(0, 200))}`,
        { code: "invalid_chat_template" },
      );
    }
  }
}

function parseTemplate(text: string, source: string): Template {
  try {
    return new Template(text);
  } catch (e) {
    const message = (e as Error).message ?? String(e);
    // @huggingface/jinja's parser reads past the end (a TypeError) when a block is never closed.
    const hint =
      e instanceof TypeError ? " at the end of the template: a {% for %} or {% if %} may be unclosed" : "";
    throw new MultiloraError(`${source}: the chat template cannot be parsed${hint} (${message})`, {
      code: "invalid_chat_template",
      cause: e,
    });
  }
}

/** A message as templates expect it: content a string, tool-call arguments an object. */
function templateMessage(message: ChatMessage, index: number): Record<string, unknown> {
  const out: Record<string, unknown> = { ...message, content: contentText(message.content, index) };
  if (message.tool_calls !== undefined) {
    out.tool_calls = message.tool_calls.map((call) => ({
      ...call,
      function: { ...call.function, arguments: parseArguments(call.function.arguments) },
    }));
  }
  return out;
}

function contentText(content: ChatMessage["content"], index: number): string {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  return content
    .map((part, j) => {
      if (part.type !== "text" || typeof part.text !== "string") {
        throw new MultiloraError(
          `messages[${index}].content[${j}]: only text parts are supported (got type ${JSON.stringify(part.type)})`,
          { code: "unsupported_content", param: `messages[${index}].content` },
        );
      }
      return part.text;
    })
    .join("\n");
}

function parseArguments(args: string): unknown {
  try {
    const parsed: unknown = JSON.parse(args);
    return typeof parsed === "object" && parsed !== null ? parsed : args;
  } catch {
    return args;
  }
}

/** A template given as text, e.g. a demo model's; `source` names it in errors. */
export function chatTemplateFromText(
  text: string,
  source: string,
  defaults: { bosToken?: string | null; eosToken?: string | null } = {},
): ChatTemplate {
  return new ChatTemplate(source, { source, text }, defaults);
}

/**
 * The chat template of the model folder `modelDir`: `chat_template.jinja` if present, else the
 * `chat_template` of `tokenizer_config.json` (a string, or a list of `{name, template}` of which
 * "default" is used, and "tool_use" when a request has tools). Without either, a template whose
 * `render` throws a clear error. A template that cannot be parsed throws here, naming the file.
 */
export function loadChatTemplate(modelDir: string): ChatTemplate {
  const config = readTokenizerConfig(modelDir);
  const defaults = {
    bosToken: specialTokenContent(config?.bos_token),
    eosToken: specialTokenContent(config?.eos_token),
  };
  const jinjaPath = join(modelDir, "chat_template.jinja");
  if (existsSync(jinjaPath)) {
    let text: string;
    try {
      text = readFileSync(jinjaPath, "utf8");
    } catch (e) {
      throw fileError(jinjaPath, e, "read");
    }
    return new ChatTemplate(modelDir, { source: jinjaPath, text }, defaults);
  }
  const configPath = join(modelDir, "tokenizer_config.json");
  const template = config === null ? null : configTemplate(config, configPath);
  return new ChatTemplate(modelDir, template, defaults);
}

function configTemplate(
  config: TokenizerConfig,
  configPath: string,
): { source: string; text: string; toolUse: { source: string; text: string } | null } | null {
  const value = config.chat_template;
  if (value === null || value === undefined) return null;
  const source = `${configPath} (chat_template)`;
  if (typeof value === "string") return { source, text: value, toolUse: null };
  const named = new Map<string, string>(
    Array.isArray(value) ? value.map((t) => [t.name, t.template]) : Object.entries(value),
  );
  const text = named.get("default");
  if (text === undefined) {
    throw new MultiloraError(
      `${configPath}: chat_template lists templates named ${[...named.keys()].map((n) => JSON.stringify(n)).join(", ") || "(none)"} ` +
        'but none named "default"',
      { code: "invalid_chat_template" },
    );
  }
  const toolUse = named.get("tool_use");
  return {
    source: `${configPath} (chat_template "default")`,
    text,
    toolUse:
      toolUse === undefined ? null : { source: `${configPath} (chat_template "tool_use")`, text: toolUse },
  };
}
