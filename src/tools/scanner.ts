/**
 * The one tool-call parser, incremental: text goes in as it is generated, and out come content and
 * finished, valid calls. `parseToolCalls` runs it over a whole text and the streaming parser over
 * deltas, so both give the same result for any split of the same text.
 *
 * The output is cut into text segments by valid calls: segment, call, segment, call, ..., segment.
 *
 * - A call is held back (nothing of it goes out) until it is complete and valid: its JSON parses, the
 *   tool it names is one of the request's, and its terminator (if the family has one) follows.
 * - A call that fails (malformed JSON, an unknown tool, bad syntax, or the text ends inside it) is not a
 *   call: its text, and everything after it, is content; no calls are looked for after it.
 * - Text that may be the start of an opener (a trailing `<tool`) is held until it is known not to be one.
 * - A segment that is only whitespace (and for Llama, one `;` between calls) is part of the calls'
 *   syntax and dropped; any other segment is content as it is. With no calls at all, the content is the
 *   whole text, whitespace included.
 */
import type { Family } from "./families.ts";
import { isJsonWhitespace, JsonScanner, topLevelSpans } from "./json-scanner.ts";

/** A finished call: the tool's name and its arguments, the original text of a JSON object. */
export interface ParsedCall {
  name: string;
  arguments: string;
}

export type ScanEvent = { content: string } | { calls: ParsedCall[] };

type CallStep = "more" | "error" | ParsedCall[];

/** The part of a call after its opener, fed one character at a time. */
interface CallParser {
  push(c: string): CallStep;
}

const CALL_KEYS = new Set(["name", "arguments", "parameters", "type", "id"]);

/**
 * The call a JSON object's text describes, or null: `{"name": <a tool>, "arguments" | "parameters":
 * {...}}`, optionally with `"type": "function"` and an `"id"` (Mistral writes one); no other keys.
 * Missing arguments are `{}`; arguments given as a string holding a JSON object are that string.
 */
export function callFromObjectText(text: string, tools: ReadonlySet<string>): ParsedCall | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isPlainObject(value)) return null;
  return callFromObject(value, topLevelSpans(text) ?? [], tools);
}

function callFromObject(
  value: Record<string, unknown>,
  spans: readonly { key?: string; text: string }[],
  tools: ReadonlySet<string>,
): ParsedCall | null {
  const keys = Object.keys(value);
  if (!keys.every((key) => CALL_KEYS.has(key))) return null;
  const { name, type, id } = value;
  if (typeof name !== "string" || !tools.has(name)) return null;
  if (type !== undefined && type !== "function") return null;
  if (id !== undefined && typeof id !== "string") return null;
  if ("arguments" in value && "parameters" in value) return null;
  const argsKey = "arguments" in value ? "arguments" : "parameters" in value ? "parameters" : null;
  if (argsKey === null) return { name, arguments: "{}" };
  const args = value[argsKey];
  if (typeof args === "string") return isObjectText(args) ? { name, arguments: args } : null;
  if (!isPlainObject(args)) return null;
  // The last member of that name, as JSON.parse keeps the last of duplicate keys.
  const span = spans.findLast((s) => s.key === argsKey);
  return span === undefined ? null : { name, arguments: span.text };
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isObjectText(text: string): boolean {
  try {
    return isPlainObject(JSON.parse(text));
  } catch {
    return false;
  }
}

/** Feeds a JSON object's characters to a scanner, keeping its text. */
class JsonPart {
  readonly #scanner = new JsonScanner();
  text = "";

  push(c: string): "more" | "error" | "done" {
    this.text += c;
    return this.#scanner.push(c);
  }
}

/** After `<tool_call>`: whitespace, a call object, whitespace, `</tool_call>`. */
class HermesCall implements CallParser {
  static readonly CLOSER = "</tool_call>";
  #phase: "before" | "json" | "after" | "closer" = "before";
  readonly #json = new JsonPart();
  #matched = 0;

  constructor(readonly tools: ReadonlySet<string>) {}

  push(c: string): CallStep {
    switch (this.#phase) {
      case "before":
        if (isJsonWhitespace(c)) return "more";
        if (c !== "{") return "error";
        this.#phase = "json";
        return this.#jsonChar(c);
      case "json":
        return this.#jsonChar(c);
      case "after":
        if (isJsonWhitespace(c)) return "more";
        this.#phase = "closer";
        return this.#closerChar(c);
      case "closer":
        return this.#closerChar(c);
    }
  }

  #jsonChar(c: string): CallStep {
    const status = this.#json.push(c);
    if (status === "done") this.#phase = "after";
    return status === "error" ? "error" : "more";
  }

  #closerChar(c: string): CallStep {
    if (c !== HermesCall.CLOSER[this.#matched]) return "error";
    this.#matched++;
    if (this.#matched < HermesCall.CLOSER.length) return "more";
    const call = callFromObjectText(this.#json.text, this.tools);
    return call === null ? "error" : [call];
  }
}

/** Llama's call object: after `<|python_tag|>` (whitespace first), or bare from its `{`. */
class LlamaCall implements CallParser {
  #started: boolean;
  readonly #json = new JsonPart();

  constructor(
    readonly tools: ReadonlySet<string>,
    afterTag: boolean,
  ) {
    this.#started = !afterTag;
  }

  push(c: string): CallStep {
    if (!this.#started) {
      if (isJsonWhitespace(c)) return "more";
      if (c !== "{") return "error";
      this.#started = true;
    }
    const status = this.#json.push(c);
    if (status !== "done") return status;
    const call = callFromObjectText(this.#json.text, this.tools);
    return call === null ? "error" : [call];
  }
}

const MISTRAL_NAME_CHAR = /^[A-Za-z0-9_.-]$/;

/**
 * After `[TOOL_CALLS]`: a JSON array of call objects (`[{"name": ..., "arguments": {...}}, ...]`), or a
 * tool name then `[ARGS]` (or nothing) then the arguments object (`name[ARGS]{...}`, `name{...}`).
 */
class MistralCall implements CallParser {
  static readonly ARGS_TAG = "[ARGS]";
  #phase: "start" | "array" | "name" | "argsTag" | "beforeArgs" | "args" = "start";
  readonly #json = new JsonPart();
  #name = "";
  #matched = 0;

  constructor(readonly tools: ReadonlySet<string>) {}

  push(c: string): CallStep {
    switch (this.#phase) {
      case "start":
        if (isJsonWhitespace(c)) return "more";
        if (c === "[") {
          this.#phase = "array";
          return this.#jsonChar(c);
        }
        if (!MISTRAL_NAME_CHAR.test(c)) return "error";
        this.#phase = "name";
        this.#name = c;
        return "more";
      case "name":
        if (MISTRAL_NAME_CHAR.test(c)) {
          this.#name += c;
          return "more";
        }
        if (c === "[") {
          this.#phase = "argsTag";
          this.#matched = 1;
          return "more";
        }
        if (c !== "{") return "error";
        this.#phase = "args";
        return this.#jsonChar(c);
      case "argsTag":
        if (c !== MistralCall.ARGS_TAG[this.#matched]) return "error";
        this.#matched++;
        if (this.#matched === MistralCall.ARGS_TAG.length) this.#phase = "beforeArgs";
        return "more";
      case "beforeArgs":
        if (isJsonWhitespace(c)) return "more";
        if (c !== "{") return "error";
        this.#phase = "args";
        return this.#jsonChar(c);
      case "array":
      case "args":
        return this.#jsonChar(c);
    }
  }

  #jsonChar(c: string): CallStep {
    const status = this.#json.push(c);
    if (status !== "done") return status;
    const calls = this.#phase === "array" ? this.#arrayCalls() : this.#namedCall();
    return calls ?? "error";
  }

  #arrayCalls(): ParsedCall[] | null {
    const text = this.#json.text;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      return null;
    }
    if (!Array.isArray(value) || value.length === 0) return null;
    const elements = topLevelSpans(text) ?? [];
    const calls: ParsedCall[] = [];
    for (const element of elements) {
      const call = callFromObjectText(element.text, this.tools);
      if (call === null) return null;
      calls.push(call);
    }
    return calls;
  }

  #namedCall(): ParsedCall[] | null {
    if (!this.tools.has(this.#name) || !isObjectText(this.#json.text)) return null;
    return [{ name: this.#name, arguments: this.#json.text }];
  }
}

const WHITESPACE = /^\s$/u;

export class ToolCallScanner {
  readonly #family: Family;
  readonly #tools: ReadonlySet<string>;
  /** Openers that may start a call anywhere in a segment. */
  readonly #openers: readonly string[];
  /** Whether a bare `{` starts a call at the message start or after a call (Llama). */
  readonly #bareJson: boolean;

  #mode: "text" | "call" | "passthrough" | "ended" = "text";
  #events: ScanEvent[] = [];
  #callCount = 0;

  // In "text": the current segment.
  /** The segment's index: 0 before the first call. */
  #segment = 0;
  /** Whitespace (and for Llama one `;`) at the segment's start, held until the segment proves to be text. */
  #pending = "";
  /** Whether the segment has text (then it is content, whitespace and all). */
  #texty = false;
  /** A suffix that may be the start of an opener. */
  #hold = "";

  // In "call".
  #call: CallParser | null = null;
  /** The call's text from its opener on: content if the call fails. */
  #raw = "";

  constructor(family: Family, tools: ReadonlySet<string>) {
    this.#family = family;
    this.#tools = tools;
    this.#openers = family.openers.filter((o) => !o.atMessageStart).map((o) => o.text);
    this.#bareJson = family.openers.some((o) => o.atMessageStart);
  }

  /** The number of calls found so far. */
  get callCount(): number {
    return this.#callCount;
  }

  push(text: string): ScanEvent[] {
    for (const c of text) this.#char(c);
    return this.#take();
  }

  end(): ScanEvent[] {
    switch (this.#mode) {
      case "text":
        if (this.#hold !== "") this.#text(this.#hold);
        this.#hold = "";
        // Whitespace is syntax between calls; with no calls it is the whole (blank) answer.
        if (this.#callCount === 0) this.#emit(this.#pending);
        this.#pending = "";
        break;
      case "call":
        this.#fail();
        break;
      case "passthrough":
      case "ended":
        break;
    }
    this.#mode = "ended";
    return this.#take();
  }

  #take(): ScanEvent[] {
    const events = this.#events;
    this.#events = [];
    return events;
  }

  #char(c: string): void {
    switch (this.#mode) {
      case "text":
        this.#textChar(c);
        return;
      case "call": {
        this.#raw += c;
        const step = (this.#call as CallParser).push(c);
        if (step === "error") this.#fail();
        else if (step !== "more") this.#callDone(step);
        return;
      }
      case "passthrough":
        this.#emit(c);
        return;
      case "ended":
        return;
    }
  }

  #textChar(c: string): void {
    if (c === "{" && this.#hold === "" && this.#bareJsonAllowed()) {
      this.#startCall(new LlamaCall(this.#tools, false), "");
      this.#char(c);
      return;
    }
    const s = this.#hold + c;
    // The held text is ASCII (a prefix of an opener), so cutting within it never splits a character.
    let cut = 0;
    while (cut < s.length && !this.#isOpenerPrefix(s.slice(cut)))
      cut = cut < this.#hold.length ? cut + 1 : s.length;
    if (cut > 0) this.#text(s.slice(0, cut));
    const rest = s.slice(cut);
    if (this.#openers.includes(rest)) {
      this.#hold = "";
      this.#startCall(this.#callParser(rest), rest);
    } else {
      this.#hold = rest;
    }
  }

  #isOpenerPrefix(s: string): boolean {
    return this.#openers.some((opener) => opener.startsWith(s));
  }

  #bareJsonAllowed(): boolean {
    return this.#bareJson && !this.#texty;
  }

  #callParser(opener: string): CallParser {
    switch (this.#family.name) {
      case "hermes":
        return new HermesCall(this.#tools);
      case "llama3":
        return new LlamaCall(this.#tools, opener === "<|python_tag|>");
      case "mistral":
        return new MistralCall(this.#tools);
    }
  }

  /** Text of the current segment that is no opener. */
  #text(s: string): void {
    if (this.#texty) {
      this.#emit(s);
      return;
    }
    for (const c of s) {
      if (this.#texty) this.#emit(c);
      else if (WHITESPACE.test(c)) this.#pending += c;
      else if (c === ";" && this.#bareJson && this.#segment > 0 && !this.#pending.includes(";")) {
        this.#pending += c;
      } else {
        this.#texty = true;
        this.#emit(this.#pending + c);
        this.#pending = "";
      }
    }
  }

  #startCall(parser: CallParser, opener: string): void {
    this.#mode = "call";
    this.#call = parser;
    this.#raw = opener;
  }

  #callDone(calls: ParsedCall[]): void {
    this.#events.push({ calls });
    this.#callCount += calls.length;
    this.#mode = "text";
    this.#call = null;
    this.#raw = "";
    this.#segment++;
    this.#pending = "";
    this.#texty = false;
  }

  /** The call is not one: its text, and all that follows, is content. */
  #fail(): void {
    this.#mode = "passthrough";
    this.#emit(this.#pending + this.#raw);
    this.#pending = "";
    this.#call = null;
    this.#raw = "";
  }

  #emit(content: string): void {
    if (content === "") return;
    const last = this.#events.at(-1);
    if (last !== undefined && "content" in last) last.content += content;
    else this.#events.push({ content });
  }
}
