/**
 * Tools in the prompt when the chat template does not show them. A template that reads `tools` lists them
 * its own way; one that does not (SmolLM2's) gets a system message that lists them and shows the family's
 * call syntax, as Hermes-style templates do. Assistant messages with `tool_calls` are written in the
 * family's syntax as their content where the template does not render `tool_calls`, so a multi-turn
 * exchange reads back as the model wrote it.
 */
import type { ChatMessage, ChatTemplate, ChatTool } from "../engine/chat-template.ts";
import { type Family, formatToolCalls } from "./families.ts";

function toolsSystemText(family: Family, tools: readonly ChatTool[]): string {
  const list = tools.map((t) => JSON.stringify(t)).join("\n");
  const example = formatToolCalls(family, [
    { name: "<function-name>", arguments: "<args-json-object>" },
  ]).replace('"<function-name>"', "<function-name>");
  return `# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n${list}\n</tools>\n\nFor each function call, write:\n${example}`;
}

function contentText(content: ChatMessage["content"]): string {
  if (typeof content === "string") return content;
  return (content ?? []).map((p) => p.text).join("\n");
}

/** The messages and tools to render for a request with tools. */
export function toolPrompt(
  template: ChatTemplate,
  family: Family,
  messages: readonly ChatMessage[],
  tools: readonly ChatTool[],
): { messages: ChatMessage[]; tools: readonly ChatTool[] } {
  const text = template.toolText ?? "";
  let out = [...messages];
  if (!text.includes("tool_calls")) {
    out = out.map((m) =>
      m.role === "assistant" && m.tool_calls && m.tool_calls.length > 0
        ? {
            ...m,
            tool_calls: undefined,
            content: [
              contentText(m.content),
              formatToolCalls(
                family,
                m.tool_calls.map((c) => c.function),
              ),
            ]
              .filter((t) => t.length > 0)
              .join("\n"),
          }
        : m,
    );
  }
  if (tools.length > 0 && !text.includes("tools")) {
    const system = toolsSystemText(family, tools);
    const first = out[0];
    out =
      first?.role === "system"
        ? [{ ...first, content: `${contentText(first.content)}\n\n${system}` }, ...out.slice(1)]
        : [{ role: "system", content: system }, ...out];
  }
  return { messages: out, tools };
}
