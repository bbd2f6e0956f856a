/**
 * A deterministic engine in TypeScript, for tests that must drive exact interleavings: nothing happens
 * until the test calls `step()`. A step admits queued requests in order (acquiring their adapters with
 * TensorRT-LLM's cache rules: an active or pinned adapter is never evicted, the least recently finished
 * idle one goes first, nothing evictable is LORA_CACHE_FULL, a task id without weights that is not cached
 * is LORA_NOT_CACHED) and gives every running request one token: (sum of the prompt + position) % vocab.
 * Events are delivered at once (as the pump would, later); `settle()` lets the awaiting code run.
 */
import type {
  Engine,
  EngineCapabilities,
  EngineStats,
  GenerateRequest,
  LoraTaskStats,
  RequestHandle,
  TokenEvent,
} from "../../src/engine/engine.ts";
import { EngineError } from "../../src/engine/engine.ts";

interface FakeRequest {
  id: bigint;
  request: GenerateRequest;
  generated: number;
  cancelled: boolean;
  admitted: boolean;
  push(event: TokenEvent): void;
  fail(error: EngineError): void;
}

interface FakeTask {
  taskId: bigint;
  active: number;
  pinned: boolean;
  lastUse: number;
  releasePending: boolean;
}

/** What each enqueue carried, for assertions. */
export interface Enqueued {
  id: bigint;
  taskId: bigint | null;
  withWeights: boolean;
}

export class FakeEngine implements Engine {
  readonly capabilities: EngineCapabilities;
  readonly maxSeqLen: number;
  readonly vocabSize: number;
  readonly enqueued: Enqueued[] = [];
  private readonly queue: FakeRequest[] = [];
  private readonly running: FakeRequest[] = [];
  private readonly tasks = new Map<bigint, FakeTask>();
  private nextId = 1n;
  private steps = 0;
  private tokens = 0;

  constructor(
    private readonly options: {
      vocab: number;
      /** Adapters the cache holds at once. */
      loraSlots: number;
      /** False: like TensorRT-LLM's executor, the server must estimate what is cached. */
      listsTasks?: boolean;
      maxSeqLen?: number;
      /** The capability (default false: the fake applies no bias). */
      logitBias?: boolean;
    },
  ) {
    this.maxSeqLen = options.maxSeqLen ?? 512;
    this.vocabSize = options.vocab;
    this.capabilities = {
      loraPin: true,
      loraRelease: true,
      loraTaskListing: options.listsTasks ?? true,
      topLogprobs: true,
      loraScale: true,
      maxTopLogprobs: 20,
      maxLoraRank: 64,
      loraDtype: "F32",
      rawLogprobs: true,
      constraints: false,
      logitBias: options.logitBias ?? false,
    };
  }

  enqueue(request: GenerateRequest): RequestHandle {
    if (request.prompt.length === 0) throw new EngineError("INVALID_ARGUMENT", "the prompt is empty");
    const id = this.nextId++;
    this.enqueued.push({
      id,
      taskId: request.lora?.taskId ?? null,
      withWeights: request.lora?.weights !== undefined,
    });
    const buffered: TokenEvent[] = [];
    let failure: EngineError | null = null;
    let ended = false;
    let waiting: { resolve: (r: IteratorResult<TokenEvent>) => void; reject: (e: Error) => void } | null =
      null;
    const r: FakeRequest = {
      id,
      request,
      generated: 0,
      cancelled: false,
      admitted: false,
      push: (event) => {
        if (event.finishReason) ended = true;
        if (waiting) {
          waiting.resolve({ value: event, done: false });
          waiting = null;
        } else buffered.push(event);
      },
      fail: (error) => {
        failure = error;
        ended = true;
        if (waiting) {
          waiting.reject(error);
          waiting = null;
        }
      },
    };
    this.queue.push(r);
    const events: AsyncIterable<TokenEvent> = {
      [Symbol.asyncIterator]: () => ({
        next: () => {
          const event = buffered.shift();
          if (event) return Promise.resolve({ value: event, done: false });
          if (failure) return Promise.reject(failure);
          if (ended) return Promise.resolve({ value: undefined, done: true });
          return new Promise((resolve, reject) => {
            waiting = { resolve, reject };
          });
        },
      }),
    };
    return {
      id,
      events,
      cancel: () => {
        r.cancelled = true;
      },
    };
  }

  /** One scheduler step: cancellations, admissions, then one token for each running request. */
  step(): void {
    this.steps++;
    for (const r of [...this.running]) if (r.cancelled) this.end(r, { token: -1, finishReason: "cancelled" });
    for (const r of this.queue.splice(0)) {
      if (r.cancelled) {
        r.push({ token: -1, finishReason: "cancelled" });
        continue;
      }
      const error = this.acquire(r.request);
      if (error) r.fail(error);
      else {
        r.admitted = true;
        this.running.push(r);
      }
    }
    for (const r of [...this.running]) {
      const prompt = Array.from(r.request.prompt);
      const token = (prompt.reduce((a, b) => a + b, 0) + prompt.length + r.generated) % this.options.vocab;
      r.generated++;
      this.tokens++;
      const ends = Array.from(r.request.endIds ?? []).includes(token);
      const finishReason = ends ? "end_id" : r.generated >= r.request.maxNewTokens ? "length" : null;
      const event: TokenEvent = { token, finishReason };
      if (r.request.topLogprobs !== undefined) {
        event.logprob = 0; // exactly 0.0: must still be reported
        event.top = [];
      }
      if (finishReason) this.end(r, event);
      else r.push(event);
    }
  }

  /** Steps until nothing runs or is queued (at most `limit` steps). */
  runToEnd(limit = 10_000): void {
    for (let i = 0; i < limit && (this.running.length > 0 || this.queue.length > 0); i++) this.step();
  }

  private end(r: FakeRequest, event: TokenEvent): void {
    this.running.splice(this.running.indexOf(r), 1);
    const taskId = r.request.lora?.taskId;
    const task = taskId ? this.tasks.get(taskId) : undefined;
    if (task) {
      task.active--;
      task.lastUse = this.steps;
      if (task.active === 0 && task.releasePending) this.tasks.delete(task.taskId);
    }
    r.push(event);
  }

  private acquire(request: GenerateRequest): EngineError | null {
    const lora = request.lora;
    if (!lora || lora.taskId === 0n) return null;
    const cached = this.tasks.get(lora.taskId);
    if (cached) {
      cached.active++;
      return null;
    }
    if (!lora.weights)
      return new EngineError("LORA_NOT_CACHED", `LoRA task ${lora.taskId} not found in cache`);
    if (this.tasks.size >= this.options.loraSlots) {
      const idle = [...this.tasks.values()]
        .filter((t) => t.active === 0 && !t.pinned)
        .sort((a, b) => a.lastUse - b.lastUse)[0];
      if (!idle) return new EngineError("LORA_CACHE_FULL", `cache is full; could not store ${lora.taskId}`);
      this.tasks.delete(idle.taskId);
    }
    this.tasks.set(lora.taskId, {
      taskId: lora.taskId,
      active: 1,
      pinned: false,
      lastUse: this.steps,
      releasePending: false,
    });
    return null;
  }

  /** Ends a running request with an engine error (what an allocation failure in a step does). */
  failRunning(error: EngineError): void {
    for (const r of this.running.splice(0)) {
      const taskId = r.request.lora?.taskId;
      const task = taskId ? this.tasks.get(taskId) : undefined;
      if (task) task.active--;
      r.fail(error);
    }
  }

  /** Drops an adapter behind the server's back (what an engine that pages adapters on its own may do). */
  forget(taskId: bigint): void {
    this.tasks.delete(taskId);
  }

  /** Requests admitted and not finished. */
  get runningCount(): number {
    return this.running.length;
  }

  stats(): EngineStats {
    const tasks: LoraTaskStats[] = [...this.tasks.values()].map((t) => ({
      taskId: t.taskId,
      bytes: 1,
      active: t.active,
      pinned: t.pinned,
      releasePending: t.releasePending,
      rows: 1,
      lastUse: t.lastUse,
    }));
    return {
      running: this.running.length,
      queued: this.queue.length,
      kvBytesUsed: 0,
      kvBytesCapacity: 0,
      loraBytesUsed: tasks.length,
      loraBytesCapacity: this.options.loraSlots,
      loraTasks: tasks.length,
      maxLoras: this.options.loraSlots,
      loraPuts: 0,
      loraHits: 0,
      loraMisses: 0,
      loraEvictions: 0,
      steps: this.steps,
      tokensGenerated: this.tokens,
      prefixQueryTokens: 0,
      prefixHitTokens: 0,
      prefixReusedBlocks: 0,
      prefixBlocks: 0,
      prefixBytes: 0,
      tasks: this.capabilities.loraTaskListing ? tasks : [],
    };
  }

  loraPin(taskId: bigint, on: boolean): void {
    const task = this.tasks.get(taskId);
    if (!task) throw new EngineError("NOT_FOUND", `task ${taskId} is not cached`);
    task.pinned = on;
  }

  loraRelease(taskId: bigint): void {
    const task = this.tasks.get(taskId);
    if (!task) throw new EngineError("NOT_FOUND", `task ${taskId} is not cached`);
    if (task.active === 0) this.tasks.delete(taskId);
    else task.releasePending = true;
  }

  async close(): Promise<void> {}
}

/** Lets every promise chain that can move on do so (no timers involved). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}
