/**
 * What the server records about each request: one structured JSON log line when it ends, and the
 * Prometheus metrics of GET /metrics (prom-client). Adapter labels only ever name adapters that exist:
 * a request is labelled with an adapter only once the registry has found it.
 */
import { writeSync } from "node:fs";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Engine } from "../engine/engine.ts";

export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export interface Logger {
  level: LogLevel;
  log(level: Exclude<LogLevel, "silent">, msg: string, fields?: Record<string, unknown>): void;
}

/** JSON lines on `write` (by default stderr, buffered: see `stderrLines`) at `level` and above. */
export function createLogger(
  level: LogLevel = "info",
  write: (line: string) => void = stderrLines(),
): Logger {
  return {
    level,
    log(l, msg, fields = {}) {
      if (LEVELS[l] < LEVELS[level]) return;
      write(`${JSON.stringify({ ts: new Date().toISOString(), level: l, msg, ...fields })}\n`);
    },
  };
}

/**
 * Lines to stderr, written together once per turn of the event loop (and at exit): one system call for
 * every request of a busy turn instead of one each.
 */
function stderrLines(): (line: string) => void {
  let pending: string[] = [];
  const flush = () => {
    if (pending.length === 0) return;
    const text = pending.join("");
    pending = [];
    try {
      writeSync(2, text);
    } catch {} // stderr closed: nothing to do
  };
  process.on("exit", flush);
  return (line) => {
    if (pending.length === 0) setImmediate(flush);
    pending.push(line);
  };
}

/**
 * Routes that probes, scrapers and gateways poll: their successful answers are logged at debug, so the
 * info log holds the requests that did work (every request is counted in the metrics all the same).
 */
const POLLS = new Set(["/health", "/v1/health/live", "/v1/health/ready", "/metrics", "/v1/models"]);

/** One request, from arrival to its last byte. */
export interface RequestRecord {
  id: string;
  route: string;
  adapter: string | null;
  /** The model or adapter the request named, found or not (logs only: metrics name existing adapters). */
  requested: string | null;
  /** The API key's name, when the server has keys. */
  tenant: string | null;
  promptTokens: number;
  completionTokens: number;
  startedAt: number;
  /** When it was handed to the engine (after parsing, the adapter lookup and its load). */
  engineAt?: number;
  firstTokenAt?: number;
  lastTokenAt?: number;
  ended: boolean;
  /** Its answer is a stream, which ends the record itself with its last byte. */
  streaming?: boolean;
}

/**
 * A counter that shows a total the engine keeps (since it started): each scrape adds what it grew by.
 */
export function engineCounter(registry: Registry, name: string, help: string, read: () => number): Counter {
  let seen = 0;
  return new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      const now = read();
      if (now > seen) this.inc(now - seen);
      seen = now;
    },
  });
}

export class Observer {
  readonly registry = new Registry();
  private readonly requests: Counter<"route" | "status" | "adapter">;
  private readonly promptTokens: Counter<"adapter">;
  private readonly completionTokens: Counter<"adapter">;
  private readonly ttft: Histogram;
  private readonly duration: Histogram<"route">;
  private readonly durations = new Map<string, Histogram.Internal<"route">>();
  private readonly interToken: Histogram;
  private readonly hits: Counter<"adapter">;
  private readonly misses: Counter<"adapter">;
  private readonly loads: Counter<"adapter">;
  private readonly loadSeconds: Histogram<"adapter">;
  private readonly evictions: Counter<"adapter">;
  private readonly cachedTasks = new Map<bigint, string>();
  private readonly requestCounters = new Map<string, Counter.Internal>();
  private next = 0;

  constructor(
    readonly log: Logger,
    private readonly engine: Engine,
    /** The adapter names the registry knows, with their task ids when loaded (for the per-adapter gauges). */
    adapterTasks: () => { name: string; taskId?: bigint }[],
  ) {
    const r = this.registry;
    const counter = <L extends string>(name: string, help: string, labelNames: L[]) =>
      new Counter<L>({ name, help, labelNames, registers: [r] });
    this.requests = counter("multilora_requests_total", "Requests by route, HTTP status and adapter", [
      "route",
      "status",
      "adapter",
    ]);
    this.promptTokens = counter("multilora_prompt_tokens_total", "Prompt tokens of finished requests", [
      "adapter",
    ]);
    this.completionTokens = counter("multilora_completion_tokens_total", "Generated tokens", ["adapter"]);
    this.ttft = new Histogram({
      name: "multilora_time_to_first_token_seconds",
      help: "From arrival to the first generated token",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [r],
    });
    this.duration = new Histogram({
      name: "multilora_request_duration_seconds",
      help: "From arrival to the last byte (streams: to their end)",
      labelNames: ["route"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers: [r],
    });
    this.interToken = new Histogram({
      name: "multilora_inter_token_latency_seconds",
      help: "Between consecutive generated tokens of a request",
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers: [r],
    });
    this.hits = counter(
      "multilora_lora_cache_hits_total",
      "Requests whose adapter was in the engine's cache",
      ["adapter"],
    );
    this.misses = counter(
      "multilora_lora_cache_misses_total",
      "Requests whose adapter had to be sent to the engine",
      ["adapter"],
    );
    this.loads = counter(
      "multilora_lora_loads_total",
      "Adapter versions read, hashed and validated from disk",
      ["adapter"],
    );
    this.loadSeconds = new Histogram({
      name: "multilora_lora_load_seconds",
      help: "Reading, hashing and validating an adapter",
      labelNames: ["adapter"],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [r],
    });
    this.evictions = counter("multilora_lora_evictions_total", "Adapters the engine evicted to make room", [
      "adapter",
    ]);
    const engineGauge = (name: string, help: string, read: (s: ReturnType<Engine["stats"]>) => number) =>
      new Gauge({
        name,
        help,
        registers: [r],
        collect() {
          this.set(read(engine.stats()));
        },
      });
    engineGauge("multilora_queue_depth", "Requests waiting for a slot in the engine", (s) => s.queued);
    engineGauge("multilora_running_requests", "Requests the engine is running", (s) => s.running);
    engineGauge(
      "multilora_kv_cache_bytes_used",
      "KV cache bytes reserved by running requests",
      (s) => s.kvBytesUsed,
    );
    engineGauge("multilora_kv_cache_bytes_capacity", "KV cache budget", (s) => s.kvBytesCapacity);
    engineGauge(
      "multilora_prefix_cache_blocks",
      "KV blocks kept for prefix reuse (CPU engine)",
      (s) => s.prefixBlocks,
    );
    engineGauge(
      "multilora_prefix_cache_bytes",
      "Bytes of the KV blocks kept for prefix reuse, within the KV budget (CPU engine)",
      (s) => s.prefixBytes,
    );
    const prefixCounter = (name: string, help: string, read: (s: ReturnType<Engine["stats"]>) => number) =>
      engineCounter(r, name, help, () => read(engine.stats()));
    prefixCounter(
      "multilora_prefix_cache_query_tokens_total",
      "Prompt tokens looked up in the prefix cache",
      (s) => s.prefixQueryTokens,
    );
    prefixCounter(
      "multilora_prefix_cache_hit_tokens_total",
      "Prompt tokens whose KV was reused from the prefix cache, not computed",
      (s) => s.prefixHitTokens,
    );
    prefixCounter(
      "multilora_prefix_cache_reused_blocks_total",
      "KV blocks copied from the prefix cache into prompts",
      (s) => s.prefixReusedBlocks,
    );
    engineGauge(
      "multilora_lora_cache_bytes_used",
      "Bytes of adapters in the engine's cache",
      (s) => s.loraBytesUsed,
    );
    engineGauge(
      "multilora_lora_cache_bytes_capacity",
      "Capacity of the engine's adapter cache",
      (s) => s.loraBytesCapacity,
    );
    const observer = this;
    new Gauge({
      name: "multilora_lora_adapter_bytes",
      help: "Bytes of each adapter in the engine's cache (0 when not cached)",
      labelNames: ["adapter"],
      registers: [r],
      collect() {
        observer.noticeEvictions();
        const tasks = new Map(engine.stats().tasks.map((t) => [t.taskId, t]));
        this.reset();
        for (const a of adapterTasks())
          this.set({ adapter: a.name }, a.taskId !== undefined ? (tasks.get(a.taskId)?.bytes ?? 0) : 0);
      },
    });
    new Gauge({
      name: "multilora_lora_adapter_pinned",
      help: "1 when the adapter is pinned in the engine's cache",
      labelNames: ["adapter"],
      registers: [r],
      collect() {
        const tasks = new Map(engine.stats().tasks.map((t) => [t.taskId, t]));
        this.reset();
        for (const a of adapterTasks())
          this.set({ adapter: a.name }, a.taskId !== undefined && tasks.get(a.taskId)?.pinned ? 1 : 0);
      },
    });
  }

  start(route: string): RequestRecord {
    return {
      id: `req-${++this.next}`,
      route,
      adapter: null,
      requested: null,
      tenant: null,
      promptTokens: 0,
      completionTokens: 0,
      startedAt: performance.now(),
      ended: false,
    };
  }

  /** A generated token of `record` (for the latency histograms). */
  token(record: RequestRecord): void {
    const now = performance.now();
    if (record.firstTokenAt === undefined) {
      record.firstTokenAt = now;
      this.ttft.observe((now - record.startedAt) / 1000);
    } else if (record.lastTokenAt !== undefined) {
      this.interToken.observe((now - record.lastTokenAt) / 1000);
    }
    record.lastTokenAt = now;
    record.completionTokens++;
  }

  /** The request is over (its last byte sent, or an error answered). Logs it once. */
  end(record: RequestRecord, status: number): void {
    if (record.ended) return;
    record.ended = true;
    const adapter = record.adapter ?? "";
    this.requestCounter(record.route, status, adapter).inc();
    if (record.promptTokens > 0) this.promptTokens.inc({ adapter }, record.promptTokens);
    if (record.completionTokens > 0) this.completionTokens.inc({ adapter }, record.completionTokens);
    const now = performance.now();
    this.durationChild(record.route).observe((now - record.startedAt) / 1000);
    const ms = (t: number | undefined) =>
      t === undefined ? null : Number((t - record.startedAt).toFixed(2));
    const level = status >= 500 ? "error" : status === 200 && POLLS.has(record.route) ? "debug" : "info";
    if (LEVELS[level] < LEVELS[this.log.level]) return;
    this.log.log(level, "request", {
      id: record.id,
      route: record.route,
      status,
      tenant: record.tenant,
      model: record.requested,
      adapter: record.adapter,
      prompt_tokens: record.promptTokens,
      completion_tokens: record.completionTokens,
      queue_ms: ms(record.engineAt),
      ttft_ms: ms(record.firstTokenAt),
      total_ms: ms(now),
    });
  }

  /** The duration histogram of one route, kept (labels hashed once). */
  private durationChild(route: string): Histogram.Internal<"route"> {
    let child = this.durations.get(route);
    if (!child) {
      child = this.duration.labels({ route });
      this.durations.set(route, child);
    }
    return child;
  }

  /** The requests counter of one (route, status, adapter), kept: labels are hashed once, not per request. */
  private requestCounter(route: string, status: number, adapter: string): Counter.Internal {
    const key = `${route}\u0000${status}\u0000${adapter}`;
    let child = this.requestCounters.get(key);
    if (!child) {
      child = this.requests.labels({ route, status: String(status), adapter });
      this.requestCounters.set(key, child);
    }
    return child;
  }

  /** The adapter cache's verdict for a request: the adapter was already in the engine, or not. */
  adapterUsed(name: string, taskId: bigint, wasCached: boolean): void {
    this.noticeEvictions();
    (wasCached ? this.hits : this.misses).inc({ adapter: name });
    this.cachedTasks.set(taskId, name);
  }

  adapterLoaded(name: string, seconds: number): void {
    this.loads.inc({ adapter: name });
    this.loadSeconds.observe({ adapter: name }, seconds);
  }

  /**
   * Adapters we saw in the engine's cache that are gone now (and not released on purpose) were evicted.
   * Only where the engine lists its cached tasks (not TensorRT-LLM's executor): elsewhere nothing is counted.
   */
  noticeEvictions(): void {
    if (!this.engine.capabilities.loraTaskListing) return;
    const cached = new Set(this.engine.stats().tasks.map((t) => t.taskId));
    for (const [taskId, name] of this.cachedTasks) {
      if (!cached.has(taskId)) {
        this.cachedTasks.delete(taskId);
        this.evictions.inc({ adapter: name });
      }
    }
  }

  /** An adapter released on purpose (unload) is not an eviction. */
  released(taskId: bigint): void {
    this.cachedTasks.delete(taskId);
  }

  metricsText(): Promise<string> {
    return this.registry.metrics();
  }
}
