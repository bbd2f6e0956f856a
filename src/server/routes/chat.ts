/** POST /v1/chat/completions: decode the body, run it through the generation core, encode chat chunks. */
import type { Hono } from "hono";
import { ChatCompletionRequestSchema } from "../../api/schemas.ts";
import type { Tokenizer } from "../../engine/tokenizer.ts";
import type { TokenLogprob } from "../../generation/generation.ts";
import type { GenerationTask } from "../../generation/task.ts";
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

/** Chat's chunks and body. */
function chatCodec(tokenizer: Tokenizer, task: GenerationTask): ResponseCodec {
  const id = completionId("chatcmpl");
  const created = Math.floor(Date.now() / 1000);
  const { returnTokenIds } = task.output;
  const logprobs = (items: TokenLogprob[]) =>
    task.topLogprobs === null ? null : chatLogprobs(tokenizer, items);
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
      const delta: Record<string, unknown> = e.text.length > 0 ? { content: e.text } : {};
      if (returnTokenIds) delta.token_ids = e.tokenIds;
      return chunk([
        { index: e.index, delta, logprobs: logprobs(e.logprobs), finish_reason: e.finishReason },
      ]);
    },
    usageChunk: (usage) => chunk([], { usage }),
    body: (results, usage) => ({
      id,
      object: "chat.completion",
      created,
      model: task.model,
      choices: results.map((r, index) => ({
        index,
        message: { role: "assistant", content: r.text },
        logprobs: logprobs(r.logprobs),
        finish_reason: r.finishReason,
        ...(returnTokenIds ? { token_ids: r.tokenIds } : {}),
      })),
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
