/**
 * A running generation: the engine requests of a task's choices, their first events already in, turned
 * into one stream of typed events: text (detokenized incrementally, UTF-8 safe, stop strings that may span
 * tokens applied), token ids, logprobs, the finish reason on each choice's last event, or an error with its
 * code. Each engine request is followed to its very end (a cancelled one too), so the engine's room is
 * known to be free when `onRequestEnd` runs.
 */

import type { RequestHandle, TokenEvent } from "../engine/engine.ts";
import type { Tokenizer } from "../engine/tokenizer.ts";
import { MultiloraError } from "../errors.ts";
import { FAMILY_TEXTS } from "../structured/tool-grammar.ts";
import { StopMatcher } from "./stop-matcher.ts";
import type { GenerationTask } from "./task.ts";

export type FinishReason = "stop" | "length";

export interface TokenLogprob {
  token: number;
  logprob: number;
  top: { token: number; logprob: number }[];
}

export type GenerationEvent =
  | {
      type: "token";
      /** The choice's index. */
      index: number;
      /** New text (may be empty while a character or a possible stop string is incomplete). */
      text: string;
      tokenIds: number[];
      logprobs: TokenLogprob[];
      /** Set on the choice's last event. */
      finishReason: FinishReason | null;
    }
  | { type: "error"; index: number; error: MultiloraError };

/** An engine request whose first event (or failure) is in. */
export interface StartedRequest {
  handle: RequestHandle;
  first: TokenEvent;
  /** The events after the first. */
  rest: AsyncIterator<TokenEvent>;
}

/** One choice read to its end. */
export interface ChoiceResult {
  text: string;
  tokenIds: number[];
  logprobs: TokenLogprob[];
  finishReason: FinishReason;
}

/** A queue of events with one reader. */
class Channel<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private reader: ((r: IteratorResult<T>) => void) | null = null;
  private closed = false;

  push(item: T): void {
    if (this.reader) {
      this.reader({ value: item, done: false });
      this.reader = null;
    } else this.items.push(item);
  }

  close(): void {
    this.closed = true;
    this.reader?.({ value: undefined, done: true });
    this.reader = null;
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        const item = this.items.shift();
        if (item !== undefined) return Promise.resolve({ value: item, done: false });
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.reader = resolve;
        });
      },
    };
  }
}

export class Generation {
  private readonly channel = new Channel<GenerationEvent>();
  private generated = 0;
  private timedOut = false;
  private readonly timer: ReturnType<typeof setTimeout> | undefined;
  private cancelled = false;
  private ended = false;

  constructor(
    readonly task: GenerationTask,
    private readonly started: readonly StartedRequest[],
    private readonly tokenizer: Tokenizer,
    /** Every engine request's end (room may have come free in the engine). */
    onRequestEnd: () => void,
    /** The whole generation's end. */
    onEnd: () => void,
  ) {
    if (task.timeoutMs > 0) {
      this.timer = setTimeout(() => {
        this.timedOut = true;
        for (const s of started) s.handle.cancel();
      }, task.timeoutMs);
    }
    const running = started.map((s, index) =>
      this.runChoice(index, s).finally(() => {
        onRequestEnd();
      }),
    );
    Promise.all(running).then(() => {
      this.ended = true;
      clearTimeout(this.timer);
      this.channel.close();
      onEnd();
    });
  }

  /** Every choice's events, in the order they happen. */
  get events(): AsyncIterable<GenerationEvent> {
    return this.channel;
  }

  /** Ends every choice still running (the client went away). */
  cancel(): void {
    this.cancelled = true;
    for (const s of this.started) s.handle.cancel();
  }

  /**
   * Ends every choice still running with `error` (the server is shutting down): a stream gets it as its
   * last event, a whole response fails with it.
   */
  stop(error: MultiloraError): void {
    if (this.ended) return;
    this.cancelled = true;
    this.channel.push({ type: "error", index: 0, error });
    for (const s of this.started) s.handle.cancel();
  }

  /** Tokens generated so far, over every choice. */
  completionTokens(): number {
    return this.generated;
  }

  usage() {
    const completion = this.generated;
    return {
      prompt_tokens: this.task.promptTokens,
      completion_tokens: completion,
      total_tokens: this.task.promptTokens + completion,
    };
  }

  /** Every choice read to its end (`onToken` runs for each token as it comes); the first error is thrown. */
  async collect(onToken?: () => void): Promise<ChoiceResult[]> {
    const results: ChoiceResult[] = this.task.choices.map(() => ({
      text: "",
      tokenIds: [],
      logprobs: [],
      finishReason: "stop",
    }));
    for await (const event of this.events) {
      if (event.type === "error") {
        this.cancel();
        throw event.error;
      }
      if (onToken) for (const _ of event.tokenIds) onToken();
      const r = results[event.index] as ChoiceResult;
      r.text += event.text;
      r.tokenIds.push(...event.tokenIds);
      r.logprobs.push(...event.logprobs);
      if (event.finishReason) r.finishReason = event.finishReason;
    }
    return results;
  }

  /** The ids of the tool-call families' tags in this vocabulary. */
  private tagIds(): ReadonlySet<number> {
    const ids = new Set<number>();
    for (const text of FAMILY_TEXTS) {
      const id = this.tokenizer.tokenToId(text);
      if (id !== undefined) ids.add(id);
    }
    return ids;
  }

  private async runChoice(index: number, started: StartedRequest): Promise<void> {
    const choice = this.task.choices[index];
    const prompt = choice ? (this.task.prompts[choice.promptIndex] ?? []) : [];
    const decoder = this.tokenizer.createStreamDecoder({
      skipSpecialTokens: true,
      contextIds: prompt.slice(-4),
      // with tools, the family's tags stay in the text for the tool-call parser
      ...(this.task.tools ? { keepIds: this.tagIds() } : {}),
    });
    const stops = new StopMatcher(this.task.stop);
    let engineDone = false;
    try {
      let event: TokenEvent | undefined = started.first;
      while (event) {
        engineDone = event.finishReason !== null;
        const hasToken = event.token >= 0;
        if (hasToken) this.generated++;
        // An end id or stop id ends the text; its own text is never part of it (a model whose end id is an
        // ordinary token, as the demo model's config.json says of byte 0x02, would show it).
        const ender = event.finishReason === "end_id" || event.finishReason === "stop_id";
        const text = hasToken && !ender ? decoder.push(event.token) : "";
        const final = event.finishReason !== null;
        const { emit, matched } = stops.push(final ? text + decoder.flush() : text, final);
        const tokenIds = hasToken ? [event.token] : [];
        const logprobs =
          event.logprob !== undefined && hasToken
            ? [{ token: event.token, logprob: event.logprob, top: event.top ?? [] }]
            : [];
        const finishReason: FinishReason | null = matched
          ? "stop"
          : event.finishReason === null
            ? null
            : event.finishReason === "length" || (event.finishReason === "cancelled" && this.timedOut)
              ? "length"
              : "stop";
        if (!(this.cancelled && event.finishReason === "cancelled"))
          this.channel.push({ type: "token", index, text: emit, tokenIds, logprobs, finishReason });
        if (finishReason) break;
        const next: IteratorResult<TokenEvent> = await started.rest.next();
        event = next.done ? undefined : next.value;
        if (!event) engineDone = true;
      }
    } catch (e) {
      engineDone = true; // a failed request is over in the engine
      this.channel.push({ type: "error", index, error: asError(e) });
    }
    if (!engineDone) await this.finishInEngine(started);
  }

  /** Cancels a request the engine is still running and follows it to its end. */
  private async finishInEngine(started: StartedRequest): Promise<void> {
    started.handle.cancel();
    try {
      for (let e = await started.rest.next(); !e.done; e = await started.rest.next()) {}
    } catch {}
  }
}

function asError(e: unknown): MultiloraError {
  return e instanceof MultiloraError
    ? e
    : new MultiloraError(`internal error (a bug in multilora): ${(e as Error)?.message ?? String(e)}`, {
        code: "internal_error",
        cause: e,
      });
}
