/**
 * A whole model output -> OpenAI's assistant message: `content` and `tool_calls`.
 *
 * The rules are the scanner's (src/tools/scanner.ts): text before, between and after valid calls is
 * content (blank text between calls is dropped); a call that is malformed, names a tool not in `tools`,
 * or is unterminated is not a call, and it and the text after it come back as content. Nothing throws,
 * no text is lost.
 */
import type { Family } from "./families.ts";
import { newToolCallId } from "./ids.ts";
import { ToolCallScanner } from "./scanner.ts";

/** What a request's `tools` must have for the parser: each tool's function name. */
export interface ToolLike {
  readonly function: { readonly name: string };
}

export interface ToolCall {
  /** `call_` and 24 random letters and digits. */
  id: string;
  name: string;
  /** The arguments object's JSON text, as the model wrote it (`{}` when it gave none). */
  arguments: string;
}

export interface ParsedToolCalls {
  /** The text that is not calls; null when there are calls and no other text. */
  content: string | null;
  calls: ToolCall[];
}

/** The set of tool names `tools` declares. */
export function toolNames(tools: Iterable<ToolLike>): ReadonlySet<string> {
  const names = new Set<string>();
  for (const tool of tools) names.add(tool.function.name);
  return names;
}

export function parseToolCalls(family: Family, text: string, tools: Iterable<ToolLike>): ParsedToolCalls {
  const scanner = new ToolCallScanner(family, toolNames(tools));
  let content = "";
  const calls: ToolCall[] = [];
  for (const event of [...scanner.push(text), ...scanner.end()]) {
    if ("content" in event) content += event.content;
    else for (const call of event.calls) calls.push({ id: newToolCallId(), ...call });
  }
  return { content: calls.length > 0 && content === "" ? null : content, calls };
}
