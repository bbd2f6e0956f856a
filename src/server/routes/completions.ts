/** POST /v1/completions: a prompt as text, texts, token ids or lists of token ids. */
import type { Hono } from "hono";
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
import { type CompletionRequest, CompletionRequestSchema } from "../schemas.ts";
import { reply } from "../wire.ts";

/** Token-id prompts are used as given; text is tokenized with the model's special tokens (BOS). */
function prompts(tokenizer: Tokenizer, prompt: CompletionRequest["prompt"]): number[][] {
  if (typeof prompt === "string") return [tokenizer.encode(prompt, { addSpecialTokens: true })];
  if (prompt.every((p) => typeof p === "number")) return [prompt as number[]];
  return (prompt as (string | number[])[]).map((p) =>
    typeof p === "string" ? tokenizer.encode(p, { addSpecialTokens: true }) : p,
  );
}

/** The legacy completions logprobs shape, offsets counted from the start of the generated text. */
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

export function completionRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.post("/v1/completions", routeDocs.completions, async (c) => {
    const body = await readBody(c.req.raw, CompletionRequestSchema, ctx.maxBodyBytes);
    const target = await resolveTarget(ctx, body.model, body.lora_model, c.get("principal"));
    const record = c.get("record");
    record.adapter = target.adapter?.name ?? null;
    const all = prompts(ctx.tokenizer, body.prompt);
    // Token ids outside the vocabulary are refused by the engine with a 400 that names them.
    const topLogprobs = body.logprobs ?? undefined;
    const inputs = all.flatMap((p) =>
      Array.from({ length: body.n }, (_, i) =>
        choiceInput(ctx, body, p, target, body.max_tokens, topLogprobs, i),
      ),
    );
    for (const input of inputs) input.onToken = () => ctx.observer.token(record);
    record.engineAt = performance.now();
    const choices = await startChoices(ctx, inputs);
    const id = completionId("cmpl");
    const created = Math.floor(Date.now() / 1000);
    const promptTokens = all.reduce((s, p) => s + p.length, 0);
    record.promptTokens = promptTokens;
    const usage = () => {
      const completion = choices.reduce((s, ch) => s + ch.completionTokens(), 0);
      return {
        prompt_tokens: promptTokens,
        completion_tokens: completion,
        total_tokens: promptTokens + completion,
      };
    };
    const echoOf = (index: number) => (body.echo ? ctx.tokenizer.decode(inputs[index]?.prompt ?? []) : "");

    if (body.stream) {
      const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) => ({
        id,
        object: "text_completion",
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
              let offset = 0;
              const echo = echoOf(index);
              if (echo) send(chunk([{ index, text: echo, logprobs: null, finish_reason: null }]));
              for await (const d of choice.deltas) {
                // A token whose text is still incomplete gets its chunk when token ids or logprobs are asked for.
                const perToken = body.return_token_ids || topLogprobs !== undefined;
                if (d.text.length === 0 && d.finishReason === null && !(perToken && d.tokenIds.length > 0))
                  continue;
                send(
                  chunk([
                    {
                      index,
                      text: d.text,
                      logprobs:
                        topLogprobs === undefined
                          ? null
                          : completionLogprobs(ctx.tokenizer, d.logprobs, offset),
                      finish_reason: d.finishReason,
                      ...(body.return_token_ids ? { token_ids: d.tokenIds } : {}),
                    },
                  ]),
                );
                offset += d.text.length;
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
        const { text: generated, tokenIds, logprobs, finishReason } = await collectChoice(choice);
        const text = echoOf(index) + generated;
        return {
          index,
          text,
          logprobs:
            topLogprobs === undefined
              ? null
              : completionLogprobs(ctx.tokenizer, logprobs, echoOf(index).length),
          finish_reason: finishReason,
          ...(body.return_token_ids ? { token_ids: tokenIds, prompt_token_ids: inputs[index]?.prompt } : {}),
        };
      }),
    );
    return reply(c.req.raw, {
      id,
      object: "text_completion",
      created,
      model: target.model,
      choices: results,
      usage: usage(),
    });
  });
}
