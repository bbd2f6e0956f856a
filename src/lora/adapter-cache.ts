/**
 * The server's side of the engine's LoRA cache: whether to send an adapter's weights with a request
 * (`load_lora_weights`: auto | always | never), the retry when the engine no longer has it, and waiting
 * while the cache is full.
 *
 * auto:   weights go along when the adapter is not known to be cached; on LORA_NOT_CACHED (evicted since),
 *         the request is sent again once, with weights. No wasted round trip when it is cached.
 * always: weights go along every time (the engine ignores them for a cached id: no overwrite).
 * never:  only the id; a miss is a 409 lora_not_cached.
 * LORA_CACHE_FULL is back-pressure with adapter-aware admission: waiting requests retry when a request
 * ends (`released()`), those whose adapter is cached first, else the one that has waited longest; none
 * waits past the queue timeout (then a 503 with Retry-After).
 *
 * What is cached is read from the engine when it can list its tasks (the CPU engine), else estimated
 * from what was sent and what failed (TensorRT-LLM).
 */
import {
  type Engine,
  EngineError,
  type GenerateRequest,
  type RequestHandle,
  type TokenEvent,
} from "../engine/engine.ts";
import { MultiloraError } from "../errors.ts";
import type { AdapterVersion } from "./registry.ts";

export type LoadMode = "auto" | "always" | "never";

/** A request whose first event (or failure) is in: what streaming needs before it sends a status. */
export interface StartedRequest {
  handle: RequestHandle;
  first: TokenEvent;
  /** The events after the first. */
  rest: AsyncIterator<TokenEvent>;
}

interface Waiter {
  taskId: bigint;
  since: number;
  wake(): void;
}

/** Waiters also re-check this often, in case room came free without a request ending here. */
const RECHECK_MS = 100;

export class AdapterCache {
  private readonly known = new Set<bigint>();
  private readonly waiters: Waiter[] = [];

  constructor(
    private readonly engine: Engine,
    /** How long a request may wait for room in a full cache. */
    private readonly queueTimeoutMs: number,
    /** Told, for each request with an adapter, whether the engine had it cached when the request came. */
    private readonly onUse: (adapter: AdapterVersion, wasCached: boolean) => void = () => {},
  ) {}

  /** Whether the engine holds the task, exactly when it can list its cache, else as far as we know. */
  isCached(taskId: bigint): boolean {
    if (this.engine.capabilities.loraTaskListing)
      return this.engine.stats().tasks.some((t) => t.taskId === taskId);
    return this.known.has(taskId);
  }

  /** Enqueues `request` with the adapter per `mode` and waits for its first event. */
  async start(
    request: GenerateRequest,
    adapter: AdapterVersion | undefined,
    mode: LoadMode = "auto",
    scale = 1,
  ): Promise<StartedRequest> {
    const started = Date.now();
    const wasCached = adapter ? this.isCached(adapter.taskId) : false;
    let forceWeights = false;
    for (;;) {
      let lora: GenerateRequest["lora"];
      if (adapter) {
        const send = mode === "always" || forceWeights || (mode === "auto" && !this.isCached(adapter.taskId));
        lora = send ? { ...(await adapter.weights()), scale } : { taskId: adapter.taskId, scale };
      }
      const handle = this.engine.enqueue({ ...request, lora });
      const events = handle.events[Symbol.asyncIterator]();
      try {
        const first = await events.next();
        if (adapter) {
          this.known.add(adapter.taskId);
          this.onUse(adapter, wasCached);
        }
        if (first.done)
          throw new MultiloraError("the engine ended the request without a response", {
            status: 500,
            type: "server_error",
          });
        return { handle, first: first.value, rest: events };
      } catch (e) {
        if (!(e instanceof EngineError) || !adapter) throw e;
        if (e.engineCode === "LORA_NOT_CACHED") {
          this.known.delete(adapter.taskId);
          if (mode === "never") {
            throw new MultiloraError(
              `adapter "${adapter.name}" is not loaded in the engine and load_lora_weights is "never": load it first (POST /v1/lora/adapters/${adapter.name}/load) or send load_lora_weights "auto"`,
              { status: 409, code: "lora_not_cached", param: "load_lora_weights" },
            );
          }
          if (forceWeights) throw e;
          forceWeights = true;
          continue;
        }
        if (e.engineCode === "LORA_CACHE_FULL") {
          const waited = Date.now() - started;
          if (waited >= this.queueTimeoutMs) {
            throw new MultiloraError(
              `the adapter cache is full (every cached adapter is in use or pinned) and no room came free in ${(waited / 1000).toFixed(1)} s; retry later`,
              { status: 503, type: "overloaded_error", code: "lora_cache_full" },
            );
          }
          await this.waitForRoom(adapter.taskId, started, this.queueTimeoutMs - waited);
          continue;
        }
        throw e;
      }
    }
  }

  /** A request ended: room may have come free. Wakes the waiters whose adapter is cached, and the oldest. */
  released(): void {
    if (this.waiters.length === 0) return;
    const oldest = this.waiters.reduce((a, b) => (b.since < a.since ? b : a));
    const chosen = this.waiters.filter((w) => w === oldest || this.isCached(w.taskId));
    for (const w of chosen) w.wake();
  }

  private waitForRoom(taskId: bigint, since: number, budgetMs: number): Promise<void> {
    return new Promise((resolve) => {
      const waiter: Waiter = {
        taskId,
        since,
        wake: () => {
          clearTimeout(timer);
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          resolve();
        },
      };
      const timer = setTimeout(() => waiter.wake(), Math.max(1, Math.min(RECHECK_MS, budgetMs)));
      this.waiters.push(waiter);
    });
  }
}
