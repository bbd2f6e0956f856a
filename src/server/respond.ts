/**
 * What chat and completions share once a generation has started: the response as one JSON (or MessagePack)
 * body, or streamed as server-sent events (`data: {json}` lines ending with `data: [DONE]`) or concatenated
 * MessagePack records. The route gives a codec that turns the generation's events into its chunks and
 * bodies. A client that goes away cancels the generation, streaming or not; an error after the status
 * was sent goes into the stream in OpenAI's error shape, with its type and code.
 */
import type { ChoiceResult, Generation, GenerationEvent } from "../generation/generation.ts";
import type { ServerContext } from "./context.ts";
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

/** Answers `request` with `generation`, streamed or whole as its task asks. */
export async function respond(
  ctx: ServerContext,
  request: Request,
  record: RequestRecord,
  generation: Generation,
  codec: ResponseCodec,
): Promise<Response> {
  const cancel = () => generation.cancel();
  if (!generation.task.output.stream) {
    request.signal.addEventListener("abort", cancel, { once: true });
    const results = await generation.collect(() => ctx.observer.token(record));
    request.signal.removeEventListener("abort", cancel);
    return reply(request, codec.body(results, generation.usage()));
  }
  return stream(ctx, request, record, generation, codec);
}

function stream(
  ctx: ServerContext,
  request: Request,
  record: RequestRecord,
  generation: Generation,
  codec: ResponseCodec,
): Response {
  const msgpack = wantsMsgpack(request);
  const encoder = new TextEncoder();
  const encode = (chunk: unknown) =>
    msgpack ? encodeMsgpack(chunk) : encoder.encode(`data: ${JSON.stringify(chunk)}\n\n`);
  const { returnTokenIds } = generation.task.output;
  const perToken = returnTokenIds || generation.task.topLogprobs !== null;
  let closed = false;
  let status = 200;
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
        if (!closed) {
          closed = true;
          controller.close();
        }
        ctx.observer.end(record, status);
      }
    },
    cancel() {
      closed = true;
      generation.cancel();
    },
  });
  const contentType = msgpack ? MSGPACK : "text/event-stream; charset=utf-8";
  return new Response(body, {
    headers: { "content-type": contentType, "cache-control": "no-cache", connection: "keep-alive" },
  });
}

export function completionId(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().replaceAll("-", "")}`;
}
