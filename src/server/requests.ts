/**
 * What chat and completions share: which model and adapter a request names (ARCHITECTURE.md section 5),
 * the engine parameters of each choice, the context-length check, and streaming as server-sent events.
 */

import { MultiloraError } from "../errors.ts";
import type { LoadMode } from "../lora/adapter-cache.ts";
import type { AdapterVersion } from "../lora/registry.ts";
import { checkAdapterAllowed, type Principal } from "./auth.ts";
import type { ServerContext } from "./context.ts";
import { type ChoiceInput, type RunningChoice, startChoice, type TokenLogprob } from "./generation.ts";
import type { ChatCompletionRequest, CompletionRequest } from "./schemas.ts";
import { encodeMsgpack, MSGPACK, wantsMsgpack } from "./wire.ts";

export interface Target {
  /** The name to echo in responses. */
  model: string;
  adapter?: AdapterVersion;
}

/**
 * The base model answers to its served names; an adapter may be named in `model` (vLLM / NIM style) or in
 * `lora_model` (llgtrt); the two must agree. Anything else is 404 model_not_found.
 */
export async function resolveTarget(
  ctx: ServerContext,
  model: string,
  loraModel: string | null | undefined,
  principal: Principal | null | undefined,
): Promise<Target> {
  const isBase = ctx.servedNames.includes(model);
  let adapterName: string | undefined = loraModel ?? undefined;
  if (!isBase) {
    if (!ctx.registry?.list().some((a) => a.name === model)) {
      throw new MultiloraError(
        `model "${model}" does not exist: the base model is ${ctx.servedNames.map((n) => `"${n}"`).join(" or ")}${ctx.registry ? "; adapters are listed at /v1/models" : ""}`,
        { status: 404, type: "not_found_error", code: "model_not_found", param: "model" },
      );
    }
    if (loraModel && loraModel !== model) {
      throw new MultiloraError(
        `model names adapter "${model}" but lora_model names "${loraModel}"; name one adapter`,
        {
          code: "conflicting_adapter",
          param: "lora_model",
        },
      );
    }
    adapterName = model;
  }
  if (adapterName === undefined) return { model };
  if (!ctx.registry) {
    throw new MultiloraError(`lora_model "${adapterName}" was given, but this server has no LoRA dir`, {
      status: 404,
      type: "not_found_error",
      code: "lora_not_found",
      param: "lora_model",
    });
  }
  checkAdapterAllowed(principal, adapterName);
  return { model, adapter: await ctx.registry.get(adapterName) };
}

type Common = ChatCompletionRequest | CompletionRequest;

/** Engine parameters for choice `index` of a request over `prompt`. */
export function choiceInput(
  ctx: ServerContext,
  body: Common,
  prompt: number[],
  target: Target,
  maxTokens: number | null | undefined,
  topLogprobs: number | undefined,
  index: number,
): ChoiceInput {
  const room = ctx.maxSeqLen - prompt.length;
  if (room <= 0 || (maxTokens !== null && maxTokens !== undefined && maxTokens > room)) {
    throw new MultiloraError(
      `this model's context is ${ctx.maxSeqLen} tokens; the prompt has ${prompt.length}${maxTokens ? ` and max_tokens asks for ${maxTokens} more` : ""}`,
      { code: "context_length_exceeded", param: "max_tokens" },
    );
  }
  const stop =
    body.stop === null || body.stop === undefined
      ? []
      : typeof body.stop === "string"
        ? [body.stop]
        : body.stop;
  return {
    prompt,
    maxTokens: maxTokens ?? room,
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? undefined,
    topK: body.top_k ?? undefined,
    minP: body.min_p ?? undefined,
    repetitionPenalty: body.repetition_penalty ?? undefined,
    frequencyPenalty: body.frequency_penalty ?? undefined,
    presencePenalty: body.presence_penalty ?? undefined,
    // Choice i uses seed + i, so n choices differ and each is reproducible.
    seed: body.seed === null || body.seed === undefined ? undefined : BigInt(body.seed) + BigInt(index),
    stop,
    topLogprobs,
    endIds: ctx.tokenizer.eosTokenIds,
    adapter: target.adapter,
    loadMode: body.load_lora_weights as LoadMode,
    loraScale: body.lora_scale,
    timeoutMs: ctx.requestTimeoutMs,
  };
}

/** Starts every choice; if one fails before its first token, the others are cancelled and the error thrown. */
export async function startChoices(ctx: ServerContext, inputs: ChoiceInput[]): Promise<RunningChoice[]> {
  const settled = await Promise.allSettled(
    inputs.map((input) => startChoice(ctx.adapters, ctx.tokenizer, input)),
  );
  const failed = settled.find((s) => s.status === "rejected");
  if (failed) {
    for (const s of settled) if (s.status === "fulfilled") s.value.cancel();
    throw (failed as PromiseRejectedResult).reason;
  }
  return settled.map((s) => (s as PromiseFulfilledResult<RunningChoice>).value);
}

/**
 * A streamed response: server-sent events (`data: {json}` lines ending with `data: [DONE]`), or, when
 * the request wants MessagePack, concatenated MessagePack records ending with the body. `produce` sends
 * the events. If the client goes away, `onCancel` runs (cancelling the engine requests) before the next
 * step. `onDone` runs once the stream has ended, either way.
 */
export function streamResponse(
  request: Request,
  produce: (send: (event: unknown) => void) => Promise<void>,
  onCancel: () => void,
  onDone: () => void,
): Response {
  const msgpack = wantsMsgpack(request);
  const encoder = new TextEncoder();
  const encode = (event: unknown) =>
    msgpack ? encodeMsgpack(event) : encoder.encode(`data: ${JSON.stringify(event)}\n\n`);
  let closed = false;
  const stream = new ReadableStream<Uint8Array>({
    async start(controller) {
      const send = (event: unknown) => {
        if (!closed) controller.enqueue(encode(event));
      };
      try {
        await produce(send);
        if (!closed && !msgpack) controller.enqueue(encoder.encode("data: [DONE]\n\n"));
      } catch (e) {
        // The status is already sent: the error goes in the stream, in OpenAI's shape.
        send({ error: { message: (e as Error).message, type: "server_error", param: null, code: null } });
      } finally {
        if (!closed) {
          closed = true;
          controller.close();
        }
        onDone();
      }
    },
    cancel() {
      closed = true;
      onCancel();
    },
  });
  const contentType = msgpack ? MSGPACK : "text/event-stream; charset=utf-8";
  return new Response(stream, {
    headers: { "content-type": contentType, "cache-control": "no-cache", connection: "keep-alive" },
  });
}

/** A whole choice read to its end (the non-streaming responses). */
export async function collectChoice(choice: RunningChoice): Promise<{
  text: string;
  tokenIds: number[];
  logprobs: TokenLogprob[];
  finishReason: string | null;
}> {
  let text = "";
  const tokenIds: number[] = [];
  const logprobs: TokenLogprob[] = [];
  let finishReason: string | null = null;
  for await (const d of choice.deltas) {
    text += d.text;
    tokenIds.push(...d.tokenIds);
    logprobs.push(...d.logprobs);
    finishReason = d.finishReason ?? finishReason;
  }
  return { text, tokenIds, logprobs, finishReason };
}

export function completionId(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().replaceAll("-", "")}`;
}
