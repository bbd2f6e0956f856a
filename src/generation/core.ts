/**
 * The generation core, between the routes and the engine: it builds one immutable task per request,
 * admits it (src/generation/admission.ts), sends each choice to the engine with its adapter as the load
 * mode says, and hands back a `Generation` once every choice's first event is in, so a route can still
 * answer a failure with its real status.
 *
 * Load modes (ARCHITECTURE.md section 5):
 *   auto:   weights go along when the adapter is not known to be cached; on LORA_NOT_CACHED (evicted since)
 *           the request is sent again once, with weights.
 *   always: weights go along every time (the engine ignores them for a cached id: no overwrite).
 *   never:  only the id; a miss is a 409 lora_not_cached.
 * LORA_CACHE_FULL is back-pressure: the request waits for room (adapter-aware order, at most the queue
 * timeout, then a 503).
 *
 * What is cached is read from the engine when it can list its tasks (the CPU engine), else estimated from
 * what was sent and what failed (TensorRT-LLM's executor).
 */
import * as v from "valibot";
import {
  type ChatCompletionRequest,
  type CompletionRequest,
  CompletionRequestSchema,
} from "../api/schemas.ts";
import type { ChatTemplate } from "../engine/chat-template.ts";
import type { ConstraintMatcher } from "../engine/constraint-native.ts";
import {
  type Engine,
  EngineError,
  type GenerateRequest,
  type LoraRef,
  type RequestHandle,
} from "../engine/engine.ts";
import type { Tokenizer } from "../engine/tokenizer.ts";
import { MultiloraError } from "../errors.ts";
import type { AdapterVersion, LoraRegistry } from "../lora/registry.ts";
import { CompilerThread } from "../structured/compiler-thread.ts";
import { GrammarCache } from "../structured/grammar-cache.ts";
import { detectFamily, type FamilyName } from "../tools/families.ts";
import { AdapterUse } from "./adapter-use.ts";
import { Admission, shuttingDown } from "./admission.ts";
import { Generation, type StartedRequest } from "./generation.ts";
import { resolveTarget, type Target } from "./target.ts";
import {
  buildChatTask,
  buildCompletionTask,
  type GenerationTask,
  type TaskConstraint,
  type TaskSettings,
} from "./task.ts";

export interface CoreSettings {
  /** Names the base model answers to; the first is its id. */
  servedNames: readonly string[];
  /** Requests held at once (waiting or running) before new ones get a 503 (`--max-queue`). */
  maxRequests: number;
  /** Longest wait for room in a full adapter cache (`--queue-timeout`). */
  queueTimeoutMs: number;
  /** Longest generation (`--request-timeout`); 0 = none. */
  requestTimeoutMs: number;
  /** Requests one API key holds at once (`--max-concurrent-per-key`); 0 or absent = no limit. */
  maxPerKey?: number;
  /** Told, for each request with an adapter, whether the engine had it cached when the request came. */
  onAdapterUse?: (adapter: AdapterVersion, wasCached: boolean) => void;
  /** Longest compilation of one output constraint (`--constraint-compile-timeout`); past it, a 400. */
  constraintCompileMs?: number;
  /** Bytes of compiled constraints kept (`--constraint-cache-mb`). */
  constraintCacheBytes?: number;
  /** How the model writes tool calls (`--tool-call-format`); absent: detected from its chat template. */
  toolFamily?: FamilyName;
}

export class GenerationCore {
  readonly admission: Admission;
  /** Which adapters requests wait for and run with now (for vLLM's lora_requests_info gauge). */
  readonly adapterUse = new AdapterUse();
  /** Task ids sent to the engine and not known to be gone (the estimate where the engine cannot list). */
  private readonly known = new Set<bigint>();
  private readonly taskSettings: TaskSettings;
  private readonly compiler = new CompilerThread();
  /** Compiled output constraints (response_format, structured_outputs, tools). */
  readonly grammars: GrammarCache;
  /** How this model writes tool calls. */
  readonly toolFamily: FamilyName;

  /** Names the base model answers to. */
  readonly servedNames: readonly string[];

  constructor(
    readonly engine: Engine,
    readonly tokenizer: Tokenizer,
    readonly chatTemplate: ChatTemplate,
    /** null when the server runs without a LoRA dir. */
    readonly registry: LoraRegistry | null,
    readonly settings: CoreSettings,
  ) {
    this.servedNames = settings.servedNames;
    this.admission = new Admission(
      settings.maxRequests,
      settings.queueTimeoutMs,
      (id) => this.isCached(id),
      settings.maxPerKey ?? 0,
    );
    this.grammars = new GrammarCache(tokenizer, this.compiler, {
      compileTimeoutMs: settings.constraintCompileMs ?? 2000,
      maxBytes: settings.constraintCacheBytes ?? 256 * 1024 * 1024,
    });
    this.toolFamily =
      settings.toolFamily ?? detectFamily(chatTemplate.toolText ?? chatTemplate.text ?? "")?.name ?? "hermes";
    this.taskSettings = {
      toolFamily: this.toolFamily,
      tokenizer,
      chatTemplate,
      maxSeqLen: engine.maxSeqLen,
      vocabSize: engine.vocabSize,
      requestTimeoutMs: settings.requestTimeoutMs,
      logitBias: engine.capabilities.logitBias,
    };
  }

  /** Whether the engine holds the task: exactly where it lists its cache, else as far as we know. */
  isCached(taskId: bigint): boolean {
    if (this.engine.capabilities.loraTaskListing)
      return this.engine.stats().tasks.some((t) => t.taskId === taskId);
    return this.known.has(taskId);
  }

  /** The model and adapter a request names (`allowedAdapters`: those the caller's key may use, null = any). */
  target(model: string, loraModel: string | null | undefined, allowedAdapters: ReadonlySet<string> | null) {
    return resolveTarget(this, model, loraModel, allowedAdapters);
  }

  chatTask(body: ChatCompletionRequest, target: Target): GenerationTask {
    return buildChatTask(this.taskSettings, body, target);
  }

  completionTask(body: CompletionRequest, target: Target): GenerationTask {
    return buildCompletionTask(this.taskSettings, body, target);
  }

  /**
   * Admits the task (`key`: the caller's API key name, for the per-key limit) and starts every choice;
   * resolves once each has its first event. If one fails before that, the others are cancelled and its
   * error is thrown. A drain stops it at once while it is not running yet (503 shutting_down), and once it
   * runs, at the drain timeout (its generation ends with a shutting_down error).
   */
  async start(task: GenerationTask, options: { key?: string | null } = {}): Promise<Generation> {
    // Compiled before admission: a schema that cannot be enforced is a 400 that never held a slot.
    const matcher = task.constraint ? await this.constraintMatcher(task.constraint) : null;
    try {
      return await this.admitAndStart(task, matcher, options.key ?? null);
    } finally {
      matcher?.free(); // the engine copied it for every choice it started
    }
  }

  private async constraintMatcher(constraint: TaskConstraint): Promise<ConstraintMatcher> {
    const { param } = constraint;
    if (!this.engine.capabilities.constraints) {
      throw new MultiloraError(`${param}: structured output is not available on this backend yet`, {
        code: "unsupported",
        param,
      });
    }
    try {
      return await this.grammars.matcher(constraint.spec);
    } catch (e) {
      if (e instanceof MultiloraError && e.param === null)
        throw new MultiloraError(`${param}: ${e.message}`, { code: e.code, param, cause: e });
      throw e;
    }
  }

  private async admitAndStart(
    task: GenerationTask,
    matcher: ConstraintMatcher | null,
    key: string | null,
  ): Promise<Generation> {
    const slot = this.admission.enter(key);
    const use = task.adapter ? this.adapterUse.enter(task.adapter.name) : undefined;
    const release = () => {
      use?.end();
      slot.release();
    };
    const arrived = Date.now();
    const starting = new Starting();
    slot.onDrain(() => starting.stop());
    const settled = await Promise.allSettled(
      task.choices.map((c) =>
        this.startChoice(task, { ...c.request, constraint: matcher }, arrived, starting),
      ),
    );
    const failed = settled.find((s) => s.status === "rejected");
    const started = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
    if (failed || starting.stopped) {
      // The started ones are followed to their end, cancelled, so their room is seen to come free.
      const aborted = new Generation(task, started, this.tokenizer, this.roomFreed, release);
      aborted.cancel();
      throw starting.stopped ? shuttingDown() : (failed as PromiseRejectedResult).reason;
    }
    const generation = new Generation(task, started, this.tokenizer, this.roomFreed, release);
    slot.running();
    use?.running();
    slot.onDrain(() =>
      generation.stop(
        new MultiloraError(
          "the server is shutting down and its drain timeout (--drain-timeout) passed before this request finished; retry on another replica",
          { code: "shutting_down" },
        ),
      ),
    );
    return generation;
  }

  private readonly roomFreed = () => {
    this.stateChanges++;
    this.admission.roomFreed();
  };

  /** Engine requests sent whose first event (or failure) has not come back yet. */
  private unstarted = 0;
  private stateChanges = 0;

  /**
   * A number that changes whenever the engine's adapter state (what is cached, pinned, in use) may have
   * changed as far as the server can see: a request sent, started or ended; a pin, unpin or release. null
   * while a request is on its way in, when the engine may change that state before telling: then read it.
   */
  engineStateKey(): number | null {
    return this.unstarted > 0 ? null : this.stateChanges;
  }

  /** One choice's engine request, sent (and sent again) until its first event is in. */
  private async startChoice(
    task: GenerationTask,
    request: GenerateRequest,
    arrived: number,
    starting: Starting,
  ): Promise<StartedRequest> {
    const adapter = task.adapter;
    if (!adapter) return this.first(request, starting);
    const wasCached = this.isCached(adapter.taskId);
    let withWeights = task.loadMode === "always" || (task.loadMode === "auto" && !wasCached);
    for (;;) {
      const epoch = this.admission.epoch;
      const lora = await this.loraPart(adapter, task.loraScale, withWeights);
      try {
        if (starting.stopped) throw shuttingDown();
        const started = await this.first({ ...request, lora }, starting);
        this.known.add(adapter.taskId);
        this.settings.onAdapterUse?.(adapter, wasCached);
        return started;
      } catch (e) {
        if (!(e instanceof EngineError)) throw e;
        if (e.engineCode === "LORA_NOT_CACHED") {
          this.known.delete(adapter.taskId);
          if (task.loadMode === "never") throw notCached(adapter);
          if (withWeights) throw e;
          withWeights = true;
          continue;
        }
        if (e.engineCode === "LORA_CACHE_FULL") {
          if (this.admission.epoch !== epoch) continue; // room came free while the failure was on its way
          if (!(await this.admission.waitForRoom(adapter.taskId, arrived))) throw cacheFull(arrived);
          continue;
        }
        throw e;
      }
    }
  }

  private async loraPart(adapter: AdapterVersion, scale: number, withWeights: boolean): Promise<LoraRef> {
    if (!withWeights) return { taskId: adapter.taskId, scale };
    const registry = this.registry as LoraRegistry; // an adapter comes from the registry
    return { ...(await registry.weights(adapter)), scale };
  }

  /** Sends a request and waits for its first event (a failure there never held room in the engine). */
  private async first(request: GenerateRequest, starting: Starting): Promise<StartedRequest> {
    this.stateChanges++;
    const handle = this.engine.enqueue(request);
    starting.add(handle);
    this.unstarted++;
    try {
      const rest = handle.events[Symbol.asyncIterator]();
      const first = await rest.next();
      if (first.done)
        throw new MultiloraError("the engine ended the request without a response", {
          code: "internal_error",
        });
      return { handle, first: first.value, rest };
    } finally {
      this.unstarted--;
      this.stateChanges++;
    }
  }

  /**
   * Loads an adapter into the engine's cache (one one-token request that carries its weights), and pins
   * it when asked (409 pin_limit when pinned adapters would leave no room).
   */
  async loadAdapter(adapter: AdapterVersion, options: { pin?: boolean } = {}): Promise<void> {
    await this.runOneToken(adapter);
    if (!options.pin) return;
    try {
      this.engine.loraPin(adapter.taskId, true);
      this.stateChanges++;
    } catch (e) {
      if (e instanceof EngineError && e.engineCode === "LORA_CACHE_FULL")
        throw new MultiloraError(e.message, { code: "pin_limit" });
      throw e;
    }
  }

  /** Unpins an adapter: it becomes evictable, so waiters may find room. */
  unpinAdapter(adapter: AdapterVersion): void {
    this.engine.loraPin(adapter.taskId, false);
    this.roomFreed();
  }

  /** Evicts an adapter from the engine's cache: at once when idle, else when its running requests end. */
  async releaseAdapter(adapter: AdapterVersion): Promise<void> {
    const cached = () => this.engine.stats().tasks.some((t) => t.taskId === adapter.taskId);
    if (!cached()) return;
    this.engine.loraRelease(adapter.taskId);
    this.known.delete(adapter.taskId);
    this.stateChanges++;
    while (cached()) await this.admission.nextRoomFreed();
    this.roomFreed();
  }

  /** One token through the whole path (start-up's warm-up, and an adapter's load). */
  async runOneToken(adapter?: AdapterVersion): Promise<void> {
    const body = v.parse(CompletionRequestSchema, {
      model: this.settings.servedNames[0] ?? "",
      prompt: [this.tokenizer.bosTokenId ?? 0],
      max_tokens: 1,
      temperature: 0,
      load_lora_weights: "always",
    });
    const task = buildCompletionTask(this.taskSettings, body, { model: body.model, adapter });
    await (await this.start(task)).collect();
  }

  /** Stops admitting; resolves when every held request has ended, or after `timeoutMs`. */
  async drain(timeoutMs: number): Promise<void> {
    await this.admission.drain(timeoutMs);
    this.compiler.close();
    this.grammars.close();
  }
}

/** The engine requests of one task before it runs: cancelled together when the server drains. */
class Starting {
  stopped = false;
  private readonly handles: RequestHandle[] = [];

  add(handle: RequestHandle): void {
    this.handles.push(handle);
    if (this.stopped) handle.cancel();
  }

  stop(): void {
    this.stopped = true;
    for (const h of this.handles) h.cancel();
  }
}

function notCached(adapter: AdapterVersion): MultiloraError {
  return new MultiloraError(
    `adapter "${adapter.name}" is not loaded in the engine and load_lora_weights is "never": load it first (POST /v1/lora/adapters/${adapter.name}/load) or send load_lora_weights "auto"`,
    { code: "lora_not_cached", param: "load_lora_weights" },
  );
}

function cacheFull(arrived: number): MultiloraError {
  const waited = (Date.now() - arrived) / 1000;
  return new MultiloraError(
    `the adapter cache is full (every cached adapter is in use or pinned) and no room came free in ${waited.toFixed(1)} s; retry later`,
    { code: "lora_cache_full" },
  );
}
