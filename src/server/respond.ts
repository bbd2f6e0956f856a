/**
 * What chat and completions share once a generation has started: the response as one JSON (or MessagePack)
 * body, or streamed as server-sent events (`data: {json}` lines ending with `data: [DONE]`) or concatenated
 * MessagePack records. The route gives a codec that turns the generation's events into its chunks and
 * bodies. A client that goes away cancels the generation, streaming or not; an error after the status
 * was sent goes into the stream in OpenAI's error shape, with its type and code.
 */
import type { Context } from "hono";
import type * as v from "valibot";
import type { Tokenizer } from "../engine/tokenizer.ts";
import { MultiloraError } from "../errors.ts";
import type { ChoiceResult, Generation, GenerationEvent } from "../generation/generation.ts";
import type { Target } from "../generation/target.ts";
import type { GenerationTask } from "../generation/task.ts";
import { readBody } from "./body.ts";
import type { AppEnv, ServerContext } from "./context.ts";
import { errorBody, httpStatus } from "./errors.ts";
import type { RequestRecord } from "./observe.ts";
import { encodeMsgpack, MSGPACK, reply, wantsMsgpack } from "./wire.ts";

export type Usage = ReturnType<Generation["usage"]>;
type TokenEvent = Extract<GenerationEvent, { type: "token" }>;

/** A route's response shapes. */
export interface ResponseCodec {
  /** Chunks sent before any token (chat: each choice's role; completions: echoed prompts). */
  opening(): unknown[];
  /** The chunk of one event. */
  chunk(event: TokenEvent): unknown;
  /** The last chunk, with the usage (`stream_options.include_usage`). */
  usageChunk(usage: Usage): unknown;
  /** The whole response, not streamed. */
  body(results: ChoiceResult[], usage: Usage): unknown;
}

/**
 * A generation route: decode the body with `schema`, resolve its model and adapter, build its task, start
 * it, and answer with the route's codec. Chat and completions differ only in these three arguments.
 */
export async function generationRoute<B extends { model: string; lora_model?: string | null }>(
  c: Context<AppEnv>,
  ctx: ServerContext,
  schema: v.GenericSchema<unknown, B>,
  buildTask: (body: B, target: Target) => GenerationTask,
  codec: (tokenizer: Tokenizer, task: GenerationTask) => ResponseCodec,
): Promise<Response> {
  // The request is admitted (counted against --max-queue and its key's limit) only once its body is in.
  const body = await readBody(c.req.raw, schema, ctx.maxBodyBytes, { timeoutMs: ctx.bodyTimeoutMs });
  const record = c.get("record");
  record.requested = body.lora_model ?? body.model;
  // An adapter that exists is named even when the request fails (403 for the key, 400 for the adapter).
  if (ctx.core.registry?.has(record.requested, "this-turn")) record.adapter = record.requested;
  const principal = c.get("principal");
  const target = await ctx.core.target(body.model, body.lora_model, principal?.adapters ?? null);
  record.adapter = target.adapter?.name ?? null;
  const task = buildTask(body, target);
  record.engineAt = performance.now();
  const generation = await ctx.core.start(task, { key: principal?.name ?? null });
  record.promptTokens = task.promptTokens;
  return respond(ctx, c.req.raw, record, generation, codec(ctx.core.tokenizer, task));
}

/** Answers `request` with `generation`, streamed or whole as its task asks. */
export async function respond(
  ctx: ServerContext,
  request: Request,
  record: RequestRecord,
  generation: Generation,
  codec: ResponseCodec,
): Promise<Response> {
  if (!generation.task.output.stream) {
    // The client may have left already (while the request waited for its first token): then stop at once.
    const cancel = () => generation.cancel();
    request.signal.addEventListener("abort", cancel, { once: true });
    if (request.signal.aborted) cancel();
    let results: ChoiceResult[];
    try {
      results = await generation.collect(() => ctx.observer.token(record));
    } finally {
      request.signal.removeEventListener("abort", cancel);
    }
    if (request.signal.aborted) throw clientLeft();
    return reply(request, codec.body(results, generation.usage()));
  }
  return stream(ctx, request, record, generation, codec);
}

/** What a request whose client went away is recorded as (nobody reads the response). */
function clientLeft(): MultiloraError {
  return new MultiloraError("the client closed the connection before the response was complete", {
    code: "cancelled",
  });
}

function stream(
  ctx: ServerContext,
  request: Request,
  record: RequestRecord,
  generation: Generation,
  codec: ResponseCodec,
): Response {
  record.streaming = true;
  const msgpack = wantsMsgpack(request);
  const encoder = new TextEncoder();
  const encode = (chunk: unknown) =>
    msgpack ? encodeMsgpack(chunk) : encoder.encode(`data: ${JSON.stringify(chunk)}\n\n`);
  const { returnTokenIds } = generation.task.output;
  const perToken = returnTokenIds || generation.task.topLogprobs !== null;
  let closed = false;
  let status = 200;
  // A client that left before the response began never pulls the stream: stop the generation all the same.
  const left = () => {
    closed = true;
    if (status === 200) status = httpStatus("cancelled");
    generation.cancel();
  };
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      const send = (chunk: unknown) => {
        if (!closed) controller.enqueue(encode(chunk));
      };
      try {
        for (const chunk of codec.opening()) send(chunk);
        for await (const event of generation.events) {
          if (event.type === "error") {
            status = httpStatus(event.error.code);
            send(errorBody(event.error));
            generation.cancel();
            break;
          }
          for (const _ of event.tokenIds) ctx.observer.token(record);
          // A token whose text is still incomplete gets its chunk when token ids or logprobs are asked for.
          if (
            event.text.length === 0 &&
            event.finishReason === null &&
            !(perToken && event.tokenIds.length > 0)
          )
            continue;
          send(codec.chunk(event));
        }
        if (status === 200 && generation.task.output.includeUsage) send(codec.usageChunk(generation.usage()));
        if (!closed && !msgpack && status === 200) controller.enqueue(encoder.encode("data: [DONE]\n\n"));
      } finally {
        request.signal.removeEventListener("abort", left);
        if (!closed) {
          closed = true;
          controller.close();
        }
        ctx.observer.end(record, status);
      }
    },
    cancel: left,
  });
  request.signal.addEventListener("abort", left, { once: true });
  if (request.signal.aborted) left();
  const contentType = msgpack ? MSGPACK : "text/event-stream; charset=utf-8";
  return new Response(body, {
    headers: { "content-type": contentType, "cache-control": "no-cache", connection: "keep-alive" },
  });
}

export function completionId(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().replaceAll("-", "")}`;
}
