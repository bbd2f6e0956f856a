/** POST /v1/chat/completions: the chat template renders the conversation, the engine continues it. */
import type { Hono } from "hono";
import type { ChatMessage } from "../../engine/chat-template.ts";
import type { Tokenizer } from "../../engine/tokenizer.ts";
import { readBody } from "../body.ts";
import type { AppEnv, ServerContext } from "../context.ts";
import type { TokenLogprob } from "../generation.ts";
import { routeDocs } from "../openapi.ts";
import {
  choiceInput,
  collectChoice,
  completionId,
  resolveTarget,
  startChoices,
  streamResponse,
} from "../requests.ts";
import { ChatCompletionRequestSchema } from "../schemas.ts";
import { reply } from "../wire.ts";

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

export function chatRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.post("/v1/chat/completions", routeDocs.chat, async (c) => {
    const body = await readBody(c.req.raw, ChatCompletionRequestSchema, ctx.maxBodyBytes);
    const target = await resolveTarget(ctx, body.model, body.lora_model, c.get("principal"));
    const record = c.get("record");
    record.adapter = target.adapter?.name ?? null;
    // OpenAI's "developer" role is the system role of older models' templates.
    const messages = body.messages.map((m) => (m.role === "developer" ? { ...m, role: "system" } : m));
    const rendered = ctx.chatTemplate.render(messages as ChatMessage[], { addGenerationPrompt: true });
    // The template wrote every special token the model expects: no second BOS.
    const prompt = ctx.tokenizer.encode(rendered, { addSpecialTokens: false });
    const topLogprobs = body.logprobs ? (body.top_logprobs ?? 0) : undefined;
    const maxTokens = body.max_completion_tokens ?? body.max_tokens;
    const inputs = Array.from({ length: body.n }, (_, i) =>
      choiceInput(ctx, body, prompt, target, maxTokens, topLogprobs, i),
    );
    for (const input of inputs) input.onToken = () => ctx.observer.token(record);
    record.engineAt = performance.now();
    const choices = await startChoices(ctx, inputs);
    record.promptTokens = prompt.length;
    const id = completionId("chatcmpl");
    const created = Math.floor(Date.now() / 1000);
    const usage = () => {
      const completion = choices.reduce((s, ch) => s + ch.completionTokens(), 0);
      return {
        prompt_tokens: prompt.length,
        completion_tokens: completion,
        total_tokens: prompt.length + completion,
      };
    };

    if (body.stream) {
      const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) => ({
        id,
        object: "chat.completion.chunk",
        created,
        model: target.model,
        choices,
        ...extra,
      });
      return streamResponse(
        c.req.raw,
        async (send) => {
          await Promise.all(
            choices.map(async (choice, index) => {
              send(
                chunk([
                  { index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null },
                ]),
              );
              for await (const d of choice.deltas) {
                // A token whose text is still incomplete gets its chunk when token ids or logprobs are asked for.
                const perToken = body.return_token_ids || topLogprobs !== undefined;
                if (d.text.length === 0 && d.finishReason === null && !(perToken && d.tokenIds.length > 0))
                  continue;
                const delta: Record<string, unknown> = d.text.length > 0 ? { content: d.text } : {};
                if (body.return_token_ids) delta.token_ids = d.tokenIds;
                send(
                  chunk([
                    {
                      index,
                      delta,
                      logprobs: topLogprobs === undefined ? null : chatLogprobs(ctx.tokenizer, d.logprobs),
                      finish_reason: d.finishReason,
                    },
                  ]),
                );
              }
            }),
          );
          if (body.stream_options?.include_usage) send(chunk([], { usage: usage() }));
        },
        () => {
          for (const ch of choices) ch.cancel();
        },
        () => ctx.observer.end(record, 200),
      );
    }

    const results = await Promise.all(
      choices.map(async (choice, index) => {
        const { text, tokenIds, logprobs, finishReason } = await collectChoice(choice);
        return {
          index,
          message: { role: "assistant", content: text },
          logprobs: topLogprobs === undefined ? null : chatLogprobs(ctx.tokenizer, logprobs),
          finish_reason: finishReason,
          ...(body.return_token_ids ? { token_ids: tokenIds } : {}),
        };
      }),
    );
    return reply(c.req.raw, {
      id,
      object: "chat.completion",
      created,
      model: target.model,
      choices: results,
      usage: usage(),
      ...(body.return_token_ids ? { prompt_token_ids: prompt } : {}),
    });
  });
}
