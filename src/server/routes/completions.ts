/** POST /v1/completions: a prompt as text, texts, token ids or lists of token ids; legacy completion chunks. */
import type { Hono } from "hono";
import { CompletionRequestSchema } from "../../api/schemas.ts";
import type { Tokenizer } from "../../engine/tokenizer.ts";
import type { TokenLogprob } from "../../generation/generation.ts";
import type { GenerationTask } from "../../generation/task.ts";
import type { AppEnv, ServerContext } from "../context.ts";
import { documented, routeDocs } from "../openapi.ts";
import { completionId, generationRoute, type ResponseCodec } from "../respond.ts";

/** The legacy completions logprobs shape, offsets counted from the start of the choice's text. */
function completionLogprobs(tokenizer: Tokenizer, items: TokenLogprob[], startOffset: number) {
  let offset = startOffset;
  const tokens: string[] = [];
  const textOffset: number[] = [];
  for (const i of items) {
    const text = tokenizer.decode([i.token]);
    tokens.push(text);
    textOffset.push(offset);
    offset += text.length;
  }
  return {
    tokens,
    token_logprobs: items.map((i) => i.logprob),
    top_logprobs: items.map((i) =>
      Object.fromEntries(i.top.map((t) => [tokenizer.decode([t.token]), t.logprob])),
    ),
    text_offset: textOffset,
  };
}

/** Completions' chunks and body. */
function completionCodec(tokenizer: Tokenizer, task: GenerationTask): ResponseCodec {
  const id = completionId("cmpl");
  const created = Math.floor(Date.now() / 1000);
  const { returnTokenIds, echo } = task.output;
  const promptOf = (index: number) => task.prompts[task.choices[index]?.promptIndex ?? 0] ?? [];
  const echoes = task.choices.map((c) => (echo ? tokenizer.decode([...promptOf(c.index)]) : ""));
  /** Each streamed choice's text so far (its logprobs' offsets). */
  const offsets = task.choices.map(() => 0);
  const logprobs = (items: TokenLogprob[], offset: number) =>
    task.topLogprobs === null ? null : completionLogprobs(tokenizer, items, offset);
  const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) => ({
    id,
    object: "text_completion",
    created,
    model: task.model,
    choices,
    ...extra,
  });
  return {
    opening: () =>
      echoes.flatMap((text, index) =>
        text ? [chunk([{ index, text, logprobs: null, finish_reason: null }])] : [],
      ),
    chunk: (e) => {
      const offset = offsets[e.index] ?? 0;
      offsets[e.index] = offset + e.text.length;
      return chunk([
        {
          index: e.index,
          text: e.text,
          logprobs: logprobs(e.logprobs, offset),
          finish_reason: e.finishReason,
          ...(returnTokenIds ? { token_ids: e.tokenIds } : {}),
        },
      ]);
    },
    usageChunk: (usage) => chunk([], { usage }),
    body: (results, usage) => ({
      id,
      object: "text_completion",
      created,
      model: task.model,
      choices: results.map((r, index) => ({
        index,
        text: (echoes[index] ?? "") + r.text,
        logprobs: logprobs(r.logprobs, echoes[index]?.length ?? 0),
        finish_reason: r.finishReason,
        ...(returnTokenIds ? { token_ids: r.tokenIds, prompt_token_ids: promptOf(index) } : {}),
      })),
      usage,
    }),
  };
}

export function completionRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.post(
    "/v1/completions",
    documented(routeDocs.completions, (c) =>
      generationRoute(
        c,
        ctx,
        CompletionRequestSchema,
        (body, target) => ctx.core.completionTask(body, target),
        completionCodec,
      ),
    ),
  );
}
