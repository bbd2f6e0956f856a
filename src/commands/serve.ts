/**
 * `multilora serve [model-dir] [lora-dir]`: the OpenAI-compatible server (positional arguments as
 * llgtrt's run.sh). Without a model dir it serves the demo model and its two adapters, generated once into
 * the cache dir. Start-up fails fast with a clear message (bad model dir, unreadable LoRA dir, broken chat
 * template), then runs one warm-up request. SIGTERM stops accepting, lets running requests finish
 * (bounded), then exits 0.
 */
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { basename, join, resolve } from "node:path";
import type { Server as BunServer } from "bun";

type Server = BunServer<undefined>;

import { type OpenedModel, openEngine } from "../engine/backend.ts";
import { loadChatTemplate } from "../engine/chat-template.ts";
import { writeDemoModel } from "../engine/demo-model.ts";
import { loadTokenizer } from "../engine/tokenizer.ts";
import { MultiloraError } from "../errors.ts";
import { fileError } from "../formats/files.ts";
import { GenerationCore } from "../generation/core.ts";
import { LoraRegistry } from "../lora/registry.ts";
import { createApp } from "../server/app.ts";
import { loadAuth } from "../server/auth.ts";
import type { ServerContext } from "../server/context.ts";
import { errorResponse } from "../server/errors.ts";
import { createLogger, Observer } from "../server/observe.ts";
import { registerVllmMetrics } from "../server/vllm-metrics.ts";
import { printErr } from "./args.ts";
import { checkCacheDir } from "./cache-dir.ts";
import { SERVE_HELP, type ServeConfig, serveConfig } from "./serve-options.ts";

export { SERVE_HELP, type ServeConfig, ServeConfigSchema, serveConfig } from "./serve-options.ts";

export function defaultCacheDir(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "multilora");
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
    modelMemory: config["model-memory"],
    cpu: {
      maxBatch: config["max-batch"] ?? undefined,
      maxSeqLen: config["max-seq-len"] ?? undefined,
      kvCacheBytes: config["kv-cache-mb"] ? config["kv-cache-mb"] * 1024 * 1024 : undefined,
      threads: config.threads ?? undefined,
      prefillChunk: config["prefill-chunk"],
      maxLoraRank: config["max-lora-rank"],
      loraCacheBytes: Math.floor(config["lora-cache-mb"] * 1024 * 1024),
      maxLoras: config["max-loras"],
      kvCacheReuse: config["kv-cache-reuse"] === "on",
      kvBlockTokens: config["kv-block-tokens"],
    },
    trtllm: {
      maxBatch: config["max-batch"] ?? undefined,
      kvCacheFreeGpuMemFraction: config["kv-cache-free-gpu-mem-fraction"] ?? undefined,
      kvCacheReuse: config["kv-cache-reuse"] === "on",
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
  checkCacheDir(cacheDir);
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
  // A lora/ folder inside the model dir is its LoRA dir unless one is given (multilora demo-model writes one).
  if (loraDir === null && existsSync(join(modelDir, "lora"))) loraDir = join(modelDir, "lora");

  // The port is taken before the model loads: a busy one is one line at once, not an error after a long
  // load; until the app is ready, liveness answers and everything else is a 503 "starting".
  let handle: (request: Request, server: Server) => Response | Promise<Response> = whileStarting;
  const server = listen(config, (request, bunServer) => handle(request, bunServer));
  try {
    return await startServing(config, modelDir, loraDir, cacheDir, server, log, (h) => {
      handle = h;
    });
  } catch (e) {
    server.stop(true);
    throw e;
  }
}

/** --tls-cert and --tls-key, read now (both or neither), so a bad file is an error at start. */
function tlsOf(config: ServeConfig): { cert: string; key: string } | undefined {
  const cert = config["tls-cert"];
  const key = config["tls-key"];
  if (cert === null && key === null) return undefined;
  if (cert === null || key === null)
    throw new MultiloraError("--tls-cert and --tls-key go together: give both, or neither for plain HTTP", {
      code: "invalid_config",
    });
  const read = (path: string) => {
    try {
      return readFileSync(path, "utf8");
    } catch (e) {
      throw fileError(path, e, "read");
    }
  };
  return { cert: read(cert), key: read(key) };
}

/** Answers during start-up: alive, not ready. */
function whileStarting(request: Request): Response {
  const path = new URL(request.url).pathname;
  if (path === "/health" || path === "/v1/health/live") return Response.json({ status: "starting" });
  return errorResponse(
    new MultiloraError("the server is starting (loading the model); retry shortly", { code: "starting" }),
    request,
  );
}

/** Listens on --host/--port; a port in use is one clear error. */
function listen(
  config: ServeConfig,
  fetch: (request: Request, server: Server) => Response | Promise<Response>,
): Server {
  const tls = tlsOf(config);
  try {
    return Bun.serve({
      hostname: config.host,
      port: config.port,
      idleTimeout: 0,
      fetch,
      ...(tls ? { tls } : {}),
    });
  } catch (e) {
    const code = (e as { code?: string }).code;
    const why =
      code === "EADDRINUSE"
        ? "is in use (another server?); choose another with --port"
        : `cannot be used: ${(e as Error).message}`;
    throw new MultiloraError(`${config.host}:${config.port} ${why}`, { code: "invalid_config" });
  }
}

async function startServing(
  config: ServeConfig,
  modelDir: string,
  loraDir: string | null,
  cacheDir: string,
  server: Server,
  log: (line: string) => void,
  serveWith: (handle: (request: Request, server: Server) => Response | Promise<Response>) => void,
): Promise<RunningServer> {
  const model = openServedEngine(config, modelDir);
  const engine = model.engine;
  const tokenizer = loadTokenizer(modelDir);
  const chatTemplate = loadChatTemplate(modelDir);
  chatTemplate.checkTemplate();
  let registry: LoraRegistry | null = null;
  try {
    const observer = new Observer(createLogger(config["log-level"]), engine, () =>
      (registry?.list() ?? []).map((l) => ({ name: l.name, taskId: l.version?.taskId })),
    );
    registry = loraDir
      ? new LoraRegistry({
          dir: resolve(loraDir),
          cacheDir,
          requirements: {
            dims: model.dims,
            modelPath: join(modelDir, "config.json"),
            dtype: engine.capabilities.loraDtype,
            maxRank: engine.capabilities.maxLoraRank,
            baseModelName: model.baseModelName,
            engine: model.engineConfig,
          },
          convertedCacheMaxBytes: Math.floor(config["converted-cache-mb"] * 1024 * 1024),
          hostMaxBytes: Math.floor(config["adapter-memory-mb"] * 1024 * 1024),
          maxAdapterBytes: Math.floor(
            (config["max-adapter-mb"] ?? 4 * config["lora-cache-mb"]) * 1024 * 1024,
          ),
          allowedPaths: config["allowed-lora-paths"].map((p) => resolve(p)),
          onLoad: (name, seconds) => observer.adapterLoaded(name, seconds),
        })
      : null;
    const served =
      config["served-model-name"].length > 0
        ? config["served-model-name"]
        : [basename(modelDir), model.modelType].filter((n) => n.length > 0);
    const core = new GenerationCore(engine, tokenizer, chatTemplate, registry, {
      servedNames: [...new Set(served)],
      maxRequests: config["max-queue"],
      queueTimeoutMs: config["queue-timeout"] * 1000,
      requestTimeoutMs: config["request-timeout"] * 1000,
      maxPerKey: perKeyLimit(config),
      onAdapterUse: (a, wasCached) => observer.adapterUsed(a.name, a.taskId, wasCached),
      constraintCompileMs: config["constraint-compile-timeout"] * 1000,
      constraintCacheBytes: Math.floor(config["constraint-cache-mb"] * 1024 * 1024),
      ...(config["tool-call-format"] === "auto" ? {} : { toolFamily: config["tool-call-format"] }),
    });
    registerVllmMetrics(observer.registry, core);
    let ready = false;
    const ctx: ServerContext = {
      core,
      observer,
      maxBodyBytes: Math.floor(config["max-body-mb"] * 1024 * 1024),
      bodyTimeoutMs: config["body-timeout"] * 1000,
      corsOrigins: config["cors-origin"],
      created: Math.floor(Date.now() / 1000),
      auth: loadAuth({
        apiKeys: config["api-key"],
        keysFile: config["api-keys-file"],
        adminKey: config["admin-key"],
        protectMetrics: config["protect-metrics"],
        openAdminRoutes: config["open-admin-routes"],
      }),
      isReady: () => ready && !core.admission.isDraining,
    };
    await core.runOneToken(); // warm-up: one token through the whole path
    for (const name of [...config.preload, ...config.pin]) {
      if (!registry)
        throw new MultiloraError(`--preload/--pin ${name}: there is no LoRA dir`, { code: "invalid_config" });
      await core.loadAdapter(await registry.get(name), { pin: config.pin.includes(name) });
      log(`${config.pin.includes(name) ? "pinned" : "preloaded"} adapter ${name}`);
    }

    const app = createApp(ctx);
    // The client's address is looked up only where it is used (the admin routes' loopback check).
    serveWith((request, bunServer) =>
      app.fetch(request, {
        get remoteAddress() {
          return bunServer.requestIP(request)?.address;
        },
      }),
    );
    ready = true;
    const bound = server.hostname ?? config.host;
    const url = `${config["tls-cert"] !== null ? "https" : "http"}://${bound === "0.0.0.0" ? "127.0.0.1" : bound.includes(":") ? `[${bound}]` : bound}:${server.port}`;
    if (!LOOPBACK_HOSTS.has(bound) && config["api-key"].length === 0 && config["api-keys-file"] === null)
      log(
        `warning: listening on ${bound} without --api-key or --api-keys-file: anyone who can reach this address can use the server`,
      );
    log(
      `multilora serving ${core.servedNames.join(", ")} (${model.architecture}, ${model.dtype}, ${model.backend} backend${model.weights ? `, ${model.weights}` : ""}) on ${url} (bound to ${bound})` +
        (registry ? `, adapters from ${registry.dir}` : ", no LoRA dir"),
    );
    return {
      url,
      port: server.port as number,
      ctx,
      stop: async () => {
        const drained = core.drain(config["drain-timeout"] * 1000);
        const closed = server.stop(false); // no new connections; the open ones get their answers
        await drained;
        // The last bytes (a 503, a stream's error event) reach their clients before the engine goes.
        await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 1000))]);
        registry?.close();
        await engine.close();
      },
    };
  } catch (e) {
    registry?.close();
    await engine.close();
    throw e;
  }
}

const LOOPBACK_HOSTS = new Set(["127.0.0.1", "::1", "localhost"]);

/** `--max-concurrent-per-key`; unset: half of --max-queue with tenant keys (--api-keys-file), else none. */
function perKeyLimit(config: ServeConfig): number {
  const set = config["max-concurrent-per-key"];
  if (set !== null) return set;
  return config["api-keys-file"] !== null ? Math.max(1, Math.ceil(config["max-queue"] / 2)) : 0;
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
    let stopping = false;
    const shutdown = (why: string) => {
      if (stopping) return;
      stopping = true;
      clearInterval(watch);
      printErr(
        `${why}: finishing running requests, then exiting (queued ones are answered 503 now; running ones are ended after --drain-timeout ${config["drain-timeout"]} s)`,
      );
      server.stop().then(resolveStop, resolveStop);
    };
    process.once("SIGTERM", () => shutdown("SIGTERM"));
    process.once("SIGINT", () => shutdown("SIGINT"));
    const watch = followNpmParent(() => shutdown("the npm process that started the server exited"));
  });
  return 0;
}

/**
 * Under `npx` (and `npm run` without exec) the server's parent is npm's `sh -c`, which dies on the SIGTERM
 * npm forwards without passing it on: the server would be orphaned and keep serving. When npm started it,
 * the server follows its parent: once reparented, it shuts down as on SIGTERM. (Elsewhere, e.g. under
 * nohup, being reparented is normal and nothing is watched.)
 */
function followNpmParent(onGone: () => void): ReturnType<typeof setInterval> | undefined {
  if (!process.env.npm_command) return undefined;
  const parent = process.ppid;
  const watch = setInterval(() => {
    if (process.ppid !== parent) onGone();
  }, 500);
  watch.unref();
  return watch;
}
