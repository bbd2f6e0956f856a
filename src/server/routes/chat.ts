/** POST /v1/chat/completions: decode the body, run it through the generation core, encode chat chunks. */
import type { Hono } from "hono";
import { ChatCompletionRequestSchema } from "../../api/schemas.ts";
import type { Tokenizer } from "../../engine/tokenizer.ts";
import type { TokenLogprob } from "../../generation/generation.ts";
import type { GenerationTask } from "../../generation/task.ts";
import { FAMILIES } from "../../tools/families.ts";
import { parseToolCalls } from "../../tools/parse.ts";
import { createToolCallStream, type ToolCallDelta, type ToolCallStream } from "../../tools/stream.ts";
import type { AppEnv, ServerContext } from "../context.ts";
import { documented, routeDocs } from "../openapi.ts";
import { completionId, generationRoute, type ResponseCodec } from "../respond.ts";

function chatLogprobs(tokenizer: Tokenizer, items: TokenLogprob[]) {
  const entry = (token: number, logprob: number) => {
    const text = tokenizer.decode([token]);
    return { token: text, logprob, bytes: [...new TextEncoder().encode(text)] };
  };
  return {
    content: items.map((i) => ({
      ...entry(i.token, i.logprob),
      top_logprobs: i.top.map((t) => entry(t.token, t.logprob)),
    })),
  };
}

/** OpenAI's streamed tool-call entries from the parser's deltas. */
function toolCallChunks(deltas: ToolCallDelta[]): { content: string; toolCalls: unknown[] } {
  let content = "";
  const toolCalls: unknown[] = [];
  for (const d of deltas) {
    if ("content" in d) content += d.content;
    else {
      const { index, id, name, argumentsDelta } = d.toolCall;
      toolCalls.push({
        index,
        ...(id ? { id, type: "function" } : {}),
        function: { ...(name ? { name } : {}), arguments: argumentsDelta ?? "" },
      });
    }
  }
  return { content, toolCalls };
}

/** Chat's chunks and body. */
function chatCodec(tokenizer: Tokenizer, task: GenerationTask): ResponseCodec {
  const id = completionId("chatcmpl");
  const created = Math.floor(Date.now() / 1000);
  const { returnTokenIds } = task.output;
  const logprobs = (items: TokenLogprob[]) =>
    task.topLogprobs === null ? null : chatLogprobs(tokenizer, items);
  // Each choice's streaming tool-call parser (chat with tools only).
  const streams = new Map<number, ToolCallStream>();
  const toolStream = (index: number): ToolCallStream | null => {
    const tools = task.tools;
    if (!tools) return null;
    let s = streams.get(index);
    if (!s) {
      s = createToolCallStream(FAMILIES[tools.family], tools.tools);
      streams.set(index, s);
    }
    return s;
  };
  const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) => ({
    id,
    object: "chat.completion.chunk",
    created,
    model: task.model,
    choices,
    ...extra,
  });
  return {
    opening: () =>
      task.choices.map((c) =>
        chunk([
          { index: c.index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null },
        ]),
      ),
    chunk: (e) => {
      let text = e.text;
      let toolCalls: unknown[] = [];
      let finish: string | null = e.finishReason;
      const calls = toolStream(e.index);
      if (calls) {
        // Text that may be a call is held back; calls go out as tool_calls entries, never as content.
        const parts = toolCallChunks([...calls.push(e.text), ...(e.finishReason ? calls.end() : [])]);
        text = parts.content;
        toolCalls = parts.toolCalls;
        if (e.finishReason && calls.callCount > 0) finish = "tool_calls";
      }
      const delta: Record<string, unknown> = text.length > 0 ? { content: text } : {};
      if (toolCalls.length > 0) delta.tool_calls = toolCalls;
      if (returnTokenIds) delta.token_ids = e.tokenIds;
      return chunk([{ index: e.index, delta, logprobs: logprobs(e.logprobs), finish_reason: finish }]);
    },
    usageChunk: (usage) => chunk([], { usage }),
    body: (results, usage) => ({
      id,
      object: "chat.completion",
      created,
      model: task.model,
      choices: results.map((r, index) => {
        const parsed = task.tools
          ? parseToolCalls(FAMILIES[task.tools.family], r.text, task.tools.tools)
          : null;
        const called = parsed !== null && parsed.calls.length > 0;
        return {
          index,
          message: called
            ? {
                role: "assistant",
                content: parsed.content,
                tool_calls: parsed.calls.map((c) => ({
                  id: c.id,
                  type: "function",
                  function: { name: c.name, arguments: c.arguments },
                })),
              }
            : { role: "assistant", content: r.text },
          logprobs: logprobs(r.logprobs),
          finish_reason: called ? "tool_calls" : r.finishReason,
          ...(returnTokenIds ? { token_ids: r.tokenIds } : {}),
        };
      }),
      usage,
      ...(returnTokenIds ? { prompt_token_ids: task.prompts[0] } : {}),
    }),
  };
}

export function chatRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.post(
    "/v1/chat/completions",
    documented(routeDocs.chat, (c) =>
      generationRoute(
        c,
        ctx,
        ChatCompletionRequestSchema,
        (body, target) => ctx.core.chatTask(body, target),
        chatCodec,
      ),
    ),
  );
}
