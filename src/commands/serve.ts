/**
 * `multilora serve [model-dir] [lora-dir]`: the OpenAI-compatible server (positional arguments as
 * llgtrt's run.sh). Without a model dir it serves the demo model and its two adapters, generated once into
 * the cache dir. Start-up fails fast with a clear message (bad model dir, unreadable LoRA dir, broken chat
 * template), then runs one warm-up request. SIGTERM stops accepting, lets running requests finish
 * (bounded), then exits 0.
 */
import { existsSync, mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { basename, join, resolve } from "node:path";
import * as v from "valibot";
import { type OpenedModel, openEngine } from "../engine/backend.ts";
import { loadChatTemplate } from "../engine/chat-template.ts";
import { writeDemoModel } from "../engine/demo-model.ts";
import { loadTokenizer } from "../engine/tokenizer.ts";
import { MultiloraError } from "../errors.ts";
import { parseWith, readJson } from "../formats/json-file.ts";
import { AdapterCache } from "../lora/adapter-cache.ts";
import { LoraRegistry } from "../lora/registry.ts";
import { createApp } from "../server/app.ts";
import { loadAuth } from "../server/auth.ts";
import type { ServerContext } from "../server/context.ts";
import { errorResponse } from "../server/errors.ts";
import { createLogger, Observer } from "../server/observe.ts";
import { parseCommandArgs, printErr, UsageError } from "./args.ts";

const Positive = v.pipe(v.number(), v.integer(), v.minValue(1));
const NonNegative = v.pipe(v.number(), v.minValue(0));

/** Every setting, its type and default: flags, `--config file.json` and `--print-config` share it. */
export const ServeConfigSchema = v.object({
  "model-dir": v.optional(v.nullable(v.string()), null),
  "lora-dir": v.optional(v.nullable(v.string()), null),
  host: v.optional(v.string(), "0.0.0.0"),
  port: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(65535)), 3000),
  "served-model-name": v.optional(v.array(v.string()), []),
  "max-batch": v.optional(v.nullable(Positive), null),
  "max-seq-len": v.optional(v.nullable(Positive), null),
  "kv-cache-mb": v.optional(v.nullable(Positive), null),
  threads: v.optional(v.nullable(Positive), null),
  "prefill-chunk": v.optional(Positive, 256),
  "max-lora-rank": v.optional(Positive, 64),
  "max-loras": v.optional(v.pipe(v.number(), v.integer(), v.minValue(0)), 0),
  "lora-cache-mb": v.optional(v.pipe(v.number(), v.gtValue(0)), 256),
  "adapter-memory-mb": v.optional(v.pipe(v.number(), v.gtValue(0)), 4096),
  "converted-cache-mb": v.optional(v.pipe(v.number(), v.gtValue(0)), 4096),
  preload: v.optional(v.array(v.string()), []),
  pin: v.optional(v.array(v.string()), []),
  "max-queue": v.optional(Positive, 256),
  "queue-timeout": v.optional(NonNegative, 60),
  "request-timeout": v.optional(NonNegative, 600),
  "max-body-mb": v.optional(v.pipe(v.number(), v.gtValue(0)), 16),
  "cache-dir": v.optional(v.nullable(v.string()), null),
  backend: v.optional(v.picklist(["auto", "cpu", "trtllm"]), "auto"),
  "kv-cache-free-gpu-mem-fraction": v.optional(
    v.nullable(v.pipe(v.number(), v.gtValue(0), v.maxValue(1))),
    null,
  ),
  "kv-cache-reuse": v.optional(v.nullable(v.picklist(["on", "off"])), null),
  "lora-host-cache-mb": v.optional(v.pipe(v.number(), v.gtValue(0)), 1024),
  "lora-device-cache-percent": v.optional(v.nullable(v.pipe(v.number(), v.gtValue(0), v.maxValue(1))), null),
  "lora-optimal-adapter-size": v.optional(Positive, 8),
  "lora-max-adapter-size": v.optional(Positive, 64),
  "trtllm-worker": v.optional(v.nullable(v.string()), null),
  "api-key": v.optional(v.array(v.pipe(v.string(), v.minLength(8))), []),
  "api-keys-file": v.optional(v.nullable(v.string()), null),
  "admin-key": v.optional(v.nullable(v.pipe(v.string(), v.minLength(8))), null),
  "protect-metrics": v.optional(v.boolean(), false),
  "log-level": v.optional(v.picklist(["debug", "info", "warn", "error", "silent"]), "info"),
});

export type ServeConfig = v.InferOutput<typeof ServeConfigSchema>;

export const SERVE_HELP = `Usage: multilora serve [model-dir] [lora-dir] [options]

Serves one base model and every LoRA adapter in lora-dir through an OpenAI-compatible API. Without a
model dir: the demo model and its two adapters (generated once into the cache dir).

Options (defaults in brackets; --config file.json sets the same names):
      --host <addr>              [0.0.0.0]
      --port <n>                 [$PORT, else 3000]
      --served-model-name <name> names the base model answers to (repeatable) [folder name, model_type]
      --max-batch <n>            sequences decoded together [8; TensorRT-LLM: the engine's max_batch_size]
      --max-seq-len <n>          prompt + completion tokens [min(4096, the model's)]
      --kv-cache-mb <n>          KV cache budget [max-batch full sequences]
      --threads <n>              compute threads [every core]
      --prefill-chunk <n>        prompt tokens per step [256]
      --max-lora-rank <n>        [64]
      --max-loras <n>            most adapters in the engine's cache at once [0: limited by bytes]
      --lora-cache-mb <n>        adapter cache capacity [256]
      --adapter-memory-mb <n>    host copies of adapter files kept to resend after an eviction; beyond,
                                 the least recently used are read again from disk when needed [4096]
      --converted-cache-mb <n>   PEFT folders converted into the cache dir; least recently used removed [4096]
      --preload a,b              adapters loaded at start-up
      --pin a,b                  adapters loaded and pinned at start-up
      --max-queue <n>            requests waiting or running before 503 [256]
      --queue-timeout <s>        longest wait for room in a full adapter cache [60]
      --request-timeout <s>      longest generation, then cut with finish_reason length [600; 0: none]
      --max-body-mb <n>          largest request body (413 beyond) [16]
      --cache-dir <dir>          converted PEFT adapters and the demo model [$XDG_CACHE_HOME/multilora]
      --backend auto|cpu|trtllm  [auto: trtllm for a trtllm-build engine dir, cpu for a checkpoint]
    TensorRT-LLM only (each defaults to TensorRT-LLM's own; --max-batch and --max-loras apply too):
      --kv-cache-free-gpu-mem-fraction <x>  GPU memory left after loading given to the KV cache [0.9]
      --kv-cache-reuse on|off    reuse KV blocks across requests with a common prefix [TensorRT-LLM's]
      --lora-host-cache-mb <n>   adapters kept in host memory [1024]
      --lora-device-cache-percent <x>  fraction of free GPU memory for adapters [TensorRT-LLM's]
      --lora-optimal-adapter-size <n>  [8]
      --lora-max-adapter-size <n>      [64]
      --trtllm-worker <path>     executorWorker for multi-GPU engines [TensorRT-LLM's]
      --api-key <key>            required on every route but health, docs and metrics (repeatable;
                                 or $MULTILORA_API_KEY) [none: open]
      --api-keys-file <json>     {"keys": [{"key", "name", "adapters": [...] | "*"}]}: per-tenant keys
      --admin-key <key>          guards the adapter admin routes [none: loopback clients only]
      --protect-metrics          /metrics needs a key too
      --log-level <level>        debug | info | warn | error | silent: one JSON line per request at info [info]
      --config <file.json>       settings from a file (flags win)
      --print-config             print the merged settings and exit
  -h, --help                     show this help`;

export function defaultCacheDir(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "multilora");
}

/** Flags over --config over defaults. */
export function serveConfig(argv: string[]): { config: ServeConfig; print: boolean; help: boolean } {
  const { values, positionals } = parseCommandArgs(argv, {
    host: { type: "string" },
    port: { type: "string" },
    "served-model-name": { type: "string", multiple: true },
    "max-batch": { type: "string" },
    "max-seq-len": { type: "string" },
    "kv-cache-mb": { type: "string" },
    threads: { type: "string" },
    "prefill-chunk": { type: "string" },
    "max-lora-rank": { type: "string" },
    "max-loras": { type: "string" },
    "lora-cache-mb": { type: "string" },
    "adapter-memory-mb": { type: "string" },
    "converted-cache-mb": { type: "string" },
    preload: { type: "string", multiple: true },
    pin: { type: "string", multiple: true },
    "max-queue": { type: "string" },
    "queue-timeout": { type: "string" },
    "request-timeout": { type: "string" },
    "max-body-mb": { type: "string" },
    "cache-dir": { type: "string" },
    backend: { type: "string" },
    "kv-cache-free-gpu-mem-fraction": { type: "string" },
    "kv-cache-reuse": { type: "string" },
    "lora-host-cache-mb": { type: "string" },
    "lora-device-cache-percent": { type: "string" },
    "lora-optimal-adapter-size": { type: "string" },
    "lora-max-adapter-size": { type: "string" },
    "trtllm-worker": { type: "string" },
    "api-key": { type: "string", multiple: true },
    "api-keys-file": { type: "string" },
    "admin-key": { type: "string" },
    "protect-metrics": { type: "boolean" },
    "log-level": { type: "string" },
    config: { type: "string" },
    "print-config": { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (positionals.length > 2) throw new UsageError(`unexpected argument "${positionals[2]}"`);
  const fromFile = values.config ? readJson(values.config) : {};
  if (typeof fromFile !== "object" || fromFile === null || Array.isArray(fromFile)) {
    throw new MultiloraError(`${values.config}: must hold a JSON object of settings`, {
      code: "invalid_config",
    });
  }
  const merged: Record<string, unknown> = { ...fromFile };
  if (process.env.PORT && merged.port === undefined) merged.port = Number(process.env.PORT);
  if (process.env.MULTILORA_API_KEY && merged["api-key"] === undefined)
    merged["api-key"] = [process.env.MULTILORA_API_KEY];
  const lists = new Set(["served-model-name", "preload", "pin", "api-key"]);
  const strings = new Set([
    "host",
    "cache-dir",
    "backend",
    "kv-cache-reuse",
    "trtllm-worker",
    "api-keys-file",
    "admin-key",
    "protect-metrics",
    "log-level",
  ]);
  for (const [key, value] of Object.entries(values)) {
    if (value === undefined || key === "config" || key === "print-config" || key === "help") continue;
    if (key === "api-key")
      merged[key] = value; // keys are taken whole, commas included
    else if (lists.has(key))
      merged[key] = (value as string[]).flatMap((s) => s.split(",")).filter((s) => s.length > 0);
    else if (strings.has(key)) merged[key] = value;
    else {
      const n = Number(value);
      if (!Number.isFinite(n)) throw new UsageError(`--${key} ${value}: expected a number`);
      merged[key] = n;
    }
  }
  if (positionals[0] !== undefined) merged["model-dir"] = positionals[0];
  if (positionals[1] !== undefined) merged["lora-dir"] = positionals[1];
  const config = parseWith(
    ServeConfigSchema,
    merged,
    values.config ? `settings (${values.config} and flags)` : "settings",
  );
  return { config, print: values["print-config"] ?? false, help: values.help ?? false };
}

export interface RunningServer {
  url: string;
  port: number;
  ctx: ServerContext;
  /** Stops accepting, lets running requests finish (bounded), closes the engine. */
  stop(): Promise<void>;
}

/** The engine for the model dir, on the backend its kind or --backend picks, sized by the settings. */
function openServedEngine(config: ServeConfig, modelDir: string): OpenedModel {
  return openEngine(modelDir, config.backend, {
    cpu: {
      maxBatch: config["max-batch"] ?? undefined,
      maxSeqLen: config["max-seq-len"] ?? undefined,
      kvCacheBytes: config["kv-cache-mb"] ? config["kv-cache-mb"] * 1024 * 1024 : undefined,
      threads: config.threads ?? undefined,
      prefillChunk: config["prefill-chunk"],
      maxLoraRank: config["max-lora-rank"],
      loraCacheBytes: Math.floor(config["lora-cache-mb"] * 1024 * 1024),
      maxLoras: config["max-loras"],
    },
    trtllm: {
      maxBatch: config["max-batch"] ?? undefined,
      kvCacheFreeGpuMemFraction: config["kv-cache-free-gpu-mem-fraction"] ?? undefined,
      kvCacheReuse: config["kv-cache-reuse"] === null ? undefined : config["kv-cache-reuse"] === "on",
      loraHostCacheBytes: config["lora-host-cache-mb"] * 1024 * 1024,
      loraDeviceCachePercent: config["lora-device-cache-percent"] ?? undefined,
      loraOptimalAdapterSize: config["lora-optimal-adapter-size"],
      loraMaxAdapterSize: config["lora-max-adapter-size"],
      maxLoras: config["max-loras"],
      workerPath: config["trtllm-worker"] ?? undefined,
    },
  });
}

/** Loads everything, checks it, warms up, and listens. */
export async function startServer(
  config: ServeConfig,
  log: (line: string) => void = printErr,
): Promise<RunningServer> {
  const cacheDir = resolve(config["cache-dir"] ?? defaultCacheDir());
  let modelDir = config["model-dir"];
  let loraDir = config["lora-dir"];
  if (!modelDir) {
    modelDir = join(cacheDir, "multilora-demo");
    if (!existsSync(join(modelDir, "config.json"))) {
      log(`writing the demo model to ${modelDir}`);
      writeDemoModel(modelDir);
    }
    loraDir ??= join(modelDir, "lora");
  }
  modelDir = resolve(modelDir);
  if (!existsSync(modelDir))
    throw new MultiloraError(`model dir ${modelDir} does not exist`, { code: "invalid_model" });
  mkdirSync(cacheDir, { recursive: true });

  const model = openServedEngine(config, modelDir);
  const engine = model.engine;
  const tokenizer = loadTokenizer(modelDir);
  const chatTemplate = loadChatTemplate(modelDir);
  chatTemplate.checkTemplate();
  try {
    let registry: LoraRegistry | null = null;
    const observer = new Observer(createLogger(config["log-level"]), engine, () =>
      (registry?.list() ?? []).map((l) => ({ name: l.name, taskId: l.version?.taskId })),
    );
    registry = loraDir
      ? new LoraRegistry(
          resolve(loraDir),
          cacheDir,
          {
            dims: model.dims,
            modelPath: join(modelDir, "config.json"),
            dtype: engine.capabilities.loraDtype,
            maxRank: engine.capabilities.maxLoraRank,
            baseModelName: model.baseModelName,
            engine: model.engineConfig,
          },
          Math.floor(config["converted-cache-mb"] * 1024 * 1024),
          (name, seconds) => observer.adapterLoaded(name, seconds),
          Math.floor(config["adapter-memory-mb"] * 1024 * 1024),
        )
      : null;
    const served =
      config["served-model-name"].length > 0
        ? config["served-model-name"]
        : [basename(modelDir), model.modelType].filter((n) => n.length > 0);
    let ready = false;
    const ctx: ServerContext = {
      engine,
      tokenizer,
      chatTemplate,
      registry,
      adapters: new AdapterCache(engine, config["queue-timeout"] * 1000, (a, wasCached) =>
        observer.adapterUsed(a.name, a.taskId, wasCached),
      ),
      observer,
      servedNames: [...new Set(served)],
      maxSeqLen: engine.maxSeqLen,
      maxBodyBytes: Math.floor(config["max-body-mb"] * 1024 * 1024),
      requestTimeoutMs: config["request-timeout"] * 1000,
      created: Math.floor(Date.now() / 1000),
      auth: loadAuth({
        apiKeys: config["api-key"],
        keysFile: config["api-keys-file"],
        adminKey: config["admin-key"],
        protectMetrics: config["protect-metrics"],
      }),
      isReady: () => ready,
    };
    // Warm-up: one token through the whole path.
    const warm = await ctx.adapters.start(
      { prompt: [tokenizer.bosTokenId ?? 0], maxNewTokens: 1, temperature: 0 },
      undefined,
    );
    for (let e = await warm.rest.next(); !e.done; e = await warm.rest.next()) {}
    for (const name of [...config.preload, ...config.pin]) {
      if (!registry)
        throw new MultiloraError(`--preload/--pin ${name}: there is no LoRA dir`, { code: "invalid_config" });
      const version = await registry.get(name);
      const started = await ctx.adapters.start(
        { prompt: [0], maxNewTokens: 1, temperature: 0 },
        version,
        "always",
      );
      for (let e = await started.rest.next(); !e.done; e = await started.rest.next()) {}
      if (config.pin.includes(name)) engine.loraPin(version.taskId, true);
      log(`${config.pin.includes(name) ? "pinned" : "preloaded"} adapter ${name}`);
    }

    const app = createApp(ctx);
    let inflight = 0;
    const limit = config["max-queue"];
    const server = Bun.serve({
      hostname: config.host,
      port: config.port,
      idleTimeout: 0,
      async fetch(request, bunServer) {
        const path = new URL(request.url).pathname;
        const counted = request.method === "POST" && path.startsWith("/v1/") && !path.startsWith("/v1/lora/");
        if (counted && !ready) {
          return errorResponse(
            new MultiloraError(
              "the server is shutting down; send the request to another replica or retry later",
              {
                status: 503,
                type: "overloaded_error",
                code: "shutting_down",
              },
            ),
            request,
          );
        }
        if (counted && inflight >= limit) {
          return errorResponse(
            new MultiloraError(`the server is at its limit of ${limit} requests (--max-queue); retry later`, {
              status: 503,
              type: "overloaded_error",
              code: "overloaded",
            }),
            request,
          );
        }
        if (!counted) return app.fetch(request, { remoteAddress: bunServer.requestIP(request)?.address });
        inflight++;
        try {
          const response = await app.fetch(request, { remoteAddress: bunServer.requestIP(request)?.address });
          if (!response.body) {
            inflight--;
            return response;
          }
          // Streams count until they end.
          let counted = true;
          const done = () => {
            if (counted) inflight--;
            counted = false;
          };
          return new Response(
            response.body.pipeThrough(
              new TransformStream({ flush: done, cancel: done } as Transformer<Uint8Array, Uint8Array>),
            ),
            response,
          );
        } catch (e) {
          inflight--;
          return errorResponse(e, request);
        }
      },
    });
    ready = true;
    const url = `http://${config.host === "0.0.0.0" ? "127.0.0.1" : config.host}:${server.port}`;
    log(
      `multilora serving ${ctx.servedNames.join(", ")} (${model.architecture}, ${model.dtype}, ${model.backend} backend) on ${url}` +
        (registry ? `, adapters from ${registry.dir}` : ", no LoRA dir"),
    );
    return {
      url,
      port: server.port as number,
      ctx,
      stop: async () => {
        ready = false;
        server.stop(false);
        const deadline = Date.now() + 30_000;
        while (inflight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        await engine.close();
      },
    };
  } catch (e) {
    await engine.close();
    throw e;
  }
}

export async function runServe(argv: string[]): Promise<number> {
  const { config, print, help } = serveConfig(argv);
  if (help) {
    console.log(SERVE_HELP);
    return 0;
  }
  if (print) {
    const redacted = {
      ...config,
      "api-key": config["api-key"].map(() => "<redacted>"),
      "admin-key": config["admin-key"] && "<redacted>",
    };
    console.log(JSON.stringify(redacted, null, 2));
    return 0;
  }
  const server = await startServer(config);
  await new Promise<void>((resolveStop) => {
    const shutdown = (signal: string) => {
      printErr(`${signal}: finishing running requests, then exiting`);
      server.stop().then(resolveStop, resolveStop);
    };
    process.once("SIGTERM", () => shutdown("SIGTERM"));
    process.once("SIGINT", () => shutdown("SIGINT"));
  });
  return 0;
}
