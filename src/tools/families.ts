/**
 * The tool-call syntaxes models are trained on ("families"), as data: what starts a call, what a call
 * looks like when we write one, and how a chat template tells which family its model speaks.
 *
 * - `hermes` (Hermes 2/3, Qwen2.5, SmolLM2): `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`,
 *   one block per call, any text before the first one.
 * - `llama3` (Llama 3.1 / 3.2 / 3.3 JSON tool calling): `{"name": "f", "parameters": {...}}` as the whole
 *   message, or after `<|python_tag|>` (text before it is content); several separated by `;` (or only
 *   whitespace). `"arguments"` is read as `"parameters"`. Built-in tools' Python calls are not parsed.
 * - `mistral` (Mistral 7B v0.3, Nemo, Small, and the v11+ tokenizers): `[TOOL_CALLS][{"name": "f",
 *   "arguments": {...}}, ...]`, or `[TOOL_CALLS]f[ARGS]{...}` / `[TOOL_CALLS]f{...}` once per call.
 *
 * `<|python_tag|>` and `[TOOL_CALLS]` are special tokens: the detokenizer must keep them in the text it
 * gives the parser (they are dropped when special tokens are skipped).
 */

export type FamilyName = "hermes" | "llama3" | "mistral";

export const FAMILY_NAMES: readonly FamilyName[] = ["hermes", "llama3", "mistral"];

/** A text that starts a tool call. */
export interface Opener {
  readonly text: string;
  /**
   * True when it starts a call only at the start of the message or right after a previous call (with
   * only whitespace, and for Llama one `;`, between): Llama's bare JSON. False: anywhere in the text.
   * The parser takes any `{` there as a call's start (any key order and whitespace); a call it is not
   * comes back as content.
   */
  readonly atMessageStart: boolean;
}

/**
 * How we write calls in this family, e.g. for a grammar that constrains the output to calls: a turn of
 * calls is `start`, then for each call `beforeArguments(name)` + the arguments JSON + `afterArguments`,
 * joined by `separator`, then `end`.
 */
export interface CallSyntax {
  readonly start: string;
  readonly beforeArguments: (name: string) => string;
  readonly afterArguments: string;
  readonly separator: string;
  readonly end: string;
}

export interface Family {
  readonly name: FamilyName;
  /** One line for logs and errors. */
  readonly description: string;
  /**
   * The texts that start a call: a trigger for the constraint in `tool_choice: "auto"`, and what the
   * streaming parser holds back. The parser is more tolerant than these (any JSON whitespace and key
   * order); they are what the model is trained to write.
   */
  readonly openers: readonly Opener[];
  readonly syntax: CallSyntax;
}

export const HERMES: Family = {
  name: "hermes",
  description: 'Hermes / Qwen2.5 / SmolLM2: <tool_call>{"name": ..., "arguments": {...}}</tool_call>',
  openers: [{ text: "<tool_call>", atMessageStart: false }],
  syntax: {
    start: "",
    beforeArguments: (name) => `<tool_call>\n{"name": ${JSON.stringify(name)}, "arguments": `,
    afterArguments: "}\n</tool_call>",
    separator: "\n",
    end: "",
  },
};

export const LLAMA3: Family = {
  name: "llama3",
  description:
    'Llama 3.1/3.2 JSON: {"name": ..., "parameters": {...}} alone or after <|python_tag|>, ";" between',
  openers: [
    { text: "<|python_tag|>", atMessageStart: false },
    { text: '{"name"', atMessageStart: true },
  ],
  syntax: {
    start: "",
    beforeArguments: (name) => `{"name": ${JSON.stringify(name)}, "parameters": `,
    afterArguments: "}",
    separator: "; ",
    end: "",
  },
};

export const MISTRAL: Family = {
  name: "mistral",
  description: 'Mistral: [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...] or [TOOL_CALLS]name[ARGS]{...}',
  openers: [{ text: "[TOOL_CALLS]", atMessageStart: false }],
  syntax: {
    start: "[TOOL_CALLS][",
    beforeArguments: (name) => `{"name": ${JSON.stringify(name)}, "arguments": `,
    afterArguments: "}",
    separator: ", ",
    end: "]",
  },
};

export const FAMILIES: Readonly<Record<FamilyName, Family>> = {
  hermes: HERMES,
  llama3: LLAMA3,
  mistral: MISTRAL,
};

/** The family a flag names ("hermes", "llama3", "mistral"; case-insensitive), or null. */
export function familyByName(name: string): Family | null {
  const key = name.trim().toLowerCase();
  return FAMILY_NAMES.includes(key as FamilyName) ? FAMILIES[key as FamilyName] : null;
}

/** Writes `calls` (each's `arguments` a JSON object's text) in the family's own syntax. */
export function formatToolCalls(
  family: Family,
  calls: readonly { name: string; arguments: string }[],
): string {
  const { syntax } = family;
  const body = calls
    .map((call) => syntax.beforeArguments(call.name) + call.arguments + syntax.afterArguments)
    .join(syntax.separator);
  return syntax.start + body + syntax.end;
}

export interface FamilyDetection {
  family: Family | null;
  /** What in the template decided it, for the server's log. */
  reason: string;
}

/**
 * Which family a chat template's model speaks, from the template's text, with the reason. Pass the
 * template used when a request has tools (tokenizer_config.json's "tool_use" one when present). The
 * checks, in order (the same markers llama.cpp's and vLLM's tool parsers key on):
 *
 * 1. `<tool_call>` → hermes (the template shows the model how to call);
 * 2. Functionary's `<function=` in a Llama 3 template → none of ours (null);
 * 3. an `ipython` role header or `<|python_tag|>` → llama3;
 * 4. `[TOOL_CALLS]` → mistral;
 * 5. no tool syntax, but ChatML (`<|im_start|>`) → hermes: the ChatML models' convention (SmolLM2's
 *    templates carry no tool syntax, yet the model family is trained on Hermes calls);
 * 6. otherwise null: the server needs the family flag.
 */
export function explainFamilyDetection(chatTemplateSource: string): FamilyDetection {
  const src = chatTemplateSource;
  if (src.includes("<tool_call>")) {
    return { family: HERMES, reason: "the template writes <tool_call> blocks" };
  }
  const llamaHeaders = src.includes("<|start_header_id|>");
  if (llamaHeaders && src.includes("<function=")) {
    return { family: null, reason: "a Functionary-style template (<function=...>), not a supported family" };
  }
  if (src.includes("ipython<|end_header_id|>") || src.includes("<|python_tag|>")) {
    return { family: LLAMA3, reason: "the template has Llama 3's ipython role or <|python_tag|>" };
  }
  if (src.includes("[TOOL_CALLS]")) {
    return { family: MISTRAL, reason: "the template writes [TOOL_CALLS]" };
  }
  if (src.includes("<|im_start|>")) {
    return {
      family: HERMES,
      reason: "a ChatML template without tool syntax; Hermes <tool_call> is the ChatML models' convention",
    };
  }
  return { family: null, reason: "the template shows no tool-call syntax this server knows" };
}

/** The family of `chatTemplateSource` (see `explainFamilyDetection`), or null when it cannot tell. */
export function detectFamily(chatTemplateSource: string): Family | null {
  return explainFamilyDetection(chatTemplateSource).family;
}
