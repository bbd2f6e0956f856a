/**
 * What the HTTP layer is given (the app factory's one argument): the engine and everything around it.
 * Built by `multilora serve` (src/commands/serve.ts) or by tests; nothing here imports Bun.
 */
import type { ChatTemplate } from "../engine/chat-template.ts";
import type { Engine } from "../engine/engine.ts";
import type { Tokenizer } from "../engine/tokenizer.ts";
import type { AdapterCache } from "../lora/adapter-cache.ts";
import type { LoraRegistry } from "../lora/registry.ts";
import type { AuthConfig, Principal } from "./auth.ts";
import type { Observer, RequestRecord } from "./observe.ts";

export interface ServerContext {
  engine: Engine;
  tokenizer: Tokenizer;
  chatTemplate: ChatTemplate;
  /** null when the server runs without a LoRA dir. */
  registry: LoraRegistry | null;
  adapters: AdapterCache;
  /** Names the base model answers to; the first is its id. */
  servedNames: string[];
  /** Prompt + generated tokens per request. */
  maxSeqLen: number;
  /** Longest generation in ms (0 = none): cut there with finish_reason "length". */
  requestTimeoutMs: number;
  /** Largest request body in bytes (413 beyond). */
  maxBodyBytes: number;
  /** Seconds since the epoch when the model was loaded (`created` in /v1/models). */
  created: number;
  /** Request log lines and Prometheus metrics. */
  observer: Observer;
  /** API keys (no keys: open, admin routes loopback only). */
  auth: AuthConfig;
  /** False while starting or draining: /v1/health/ready answers 503. */
  isReady(): boolean;
}

/** What the runtime tells the app about each request (Hono's `env`). */
export interface RequestEnv {
  /** The client's address, when the runtime knows it. */
  remoteAddress?: string;
}

/** The Hono environment of every route: the runtime's bindings and the request's principal. */
export type AppEnv = {
  Bindings: RequestEnv;
  Variables: { principal: Principal | null; record: RequestRecord };
};
