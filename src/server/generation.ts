/**
 * One choice of a completion, from token ids to text: starts the engine request through the adapter
 * cache (so its first event, or its error, is in before any HTTP status is sent), detokenizes
 * incrementally (UTF-8 safe), applies stop strings that may span tokens, and reports logprobs.
 */
import type { FinishReason as EngineFinish, TokenEvent } from "../engine/engine.ts";
import type { Tokenizer } from "../engine/tokenizer.ts";
import type { AdapterCache, LoadMode } from "../lora/adapter-cache.ts";
import type { AdapterVersion } from "../lora/registry.ts";

export interface ChoiceInput {
  prompt: number[];
  maxTokens: number;
  temperature: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
  seed?: bigint;
  stop: string[];
  /** undefined: no logprobs; k: the chosen token's and the k most likely. */
  topLogprobs?: number;
  endIds: readonly number[];
  adapter?: AdapterVersion;
  loadMode: LoadMode;
  loraScale: number;
  /** Generation stops after this long (finish_reason "length": a server limit cut it); 0 = none. */
  timeoutMs: number;
  /** Called for every generated token (the latency metrics). */
  onToken?: () => void;
}

export interface TokenLogprob {
  token: number;
  logprob: number;
  top: { token: number; logprob: number }[];
}

/** A piece of a choice: new text, the tokens that made it, and their logprobs. */
export interface ChoiceDelta {
  text: string;
  tokenIds: number[];
  logprobs: TokenLogprob[];
  /** OpenAI's finish reasons; set on the last delta. */
  finishReason: "stop" | "length" | null;
}

export interface RunningChoice {
  deltas: AsyncIterable<ChoiceDelta>;
  cancel(): void;
  /** Tokens generated so far (usage). */
  completionTokens(): number;
}

/** Starts a choice; throws (with the right status) if the request fails before its first token. */
export async function startChoice(
  adapters: AdapterCache,
  tokenizer: Tokenizer,
  input: ChoiceInput,
): Promise<RunningChoice> {
  const started = await adapters.start(
    {
      prompt: input.prompt,
      maxNewTokens: input.maxTokens,
      temperature: input.temperature,
      topP: input.topP,
      topK: input.topK !== undefined && input.topK > 0 ? input.topK : undefined,
      minP: input.minP,
      repetitionPenalty: input.repetitionPenalty,
      frequencyPenalty: input.frequencyPenalty,
      presencePenalty: input.presencePenalty,
      seed: input.seed,
      endIds: input.endIds,
      topLogprobs: input.topLogprobs,
    },
    input.adapter,
    input.loadMode,
    input.loraScale,
  );
  let generated = 0;
  let stopped = false;
  let timedOut = false;
  const cancel = () => {
    stopped = true;
    clearTimeout(timer);
    started.handle.cancel();
  };
  const timer =
    input.timeoutMs > 0
      ? setTimeout(() => {
          timedOut = true;
          started.handle.cancel();
        }, input.timeoutMs)
      : undefined;
  async function* deltas(): AsyncGenerator<ChoiceDelta> {
    const decoder = tokenizer.createStreamDecoder({
      skipSpecialTokens: true,
      contextIds: input.prompt.slice(-4),
    });
    const stops = new StopMatcher(input.stop);
    let event: TokenEvent | undefined = started.first;
    try {
      while (event) {
        if (event.token >= 0) {
          generated++;
          input.onToken?.();
        }
        const text = event.token >= 0 ? decoder.push(event.token) : "";
        const flushed = event.finishReason ? text + decoder.flush() : text;
        const { emit, matched } = stops.push(flushed, event.finishReason !== null);
        const logprobs: TokenLogprob[] =
          event.logprob !== undefined && event.token >= 0
            ? [{ token: event.token, logprob: event.logprob, top: event.top ?? [] }]
            : [];
        const ids = event.token >= 0 ? [event.token] : [];
        if (matched) {
          cancel();
          yield { text: emit, tokenIds: ids, logprobs, finishReason: "stop" };
          return;
        }
        const finish = openAiFinish(event.finishReason, timedOut);
        if (finish) {
          stopped = true; // the engine ended it: nothing to cancel
          clearTimeout(timer);
        }
        yield { text: emit, tokenIds: ids, logprobs, finishReason: finish };
        if (finish) return;
        const next = await started.rest.next();
        event = next.done ? undefined : next.value;
      }
    } finally {
      if (!stopped) cancel(); // the consumer went away early (a disconnected client): free the engine slot
      adapters.released();
    }
  }
  return { deltas: deltas(), cancel, completionTokens: () => generated };
}

/** The engine's finish reason in OpenAI's terms; a request cut by --request-timeout ends as "length". */
function openAiFinish(reason: EngineFinish | null, timedOut: boolean): "stop" | "length" | null {
  if (reason === null) return null;
  return reason === "length" || (reason === "cancelled" && timedOut) ? "length" : "stop";
}

/**
 * Stop strings over streamed text: text is held back while it could still be the start of a stop
 * string, and the output ends just before the first match, even when it spans tokens.
 */
export class StopMatcher {
  private pending = "";

  constructor(private readonly stops: readonly string[]) {}

  push(text: string, final: boolean): { emit: string; matched: boolean } {
    this.pending += text;
    if (this.stops.length === 0) return this.take(this.pending.length, false);
    let first = -1;
    for (const s of this.stops) {
      if (s.length === 0) continue;
      const at = this.pending.indexOf(s);
      if (at >= 0 && (first < 0 || at < first)) first = at;
    }
    if (first >= 0) return this.take(first, true);
    if (final) return this.take(this.pending.length, false);
    // Keep the longest tail that is a prefix of some stop string.
    let keep = 0;
    for (const s of this.stops) {
      for (let n = Math.min(s.length - 1, this.pending.length); n > keep; n--) {
        if (this.pending.endsWith(s.slice(0, n))) {
          keep = n;
          break;
        }
      }
    }
    return this.take(this.pending.length - keep, false);
  }

  private take(n: number, matched: boolean): { emit: string; matched: boolean } {
    const emit = this.pending.slice(0, n);
    this.pending = matched ? "" : this.pending.slice(n);
    return { emit, matched };
  }
}
