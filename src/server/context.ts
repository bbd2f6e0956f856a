/**
 * What the HTTP layer is given (the app factory's one argument): the generation core, which holds the
 * engine, tokenizer and adapters, and what is the server's own. Built by `multilora serve`
 * (src/commands/serve.ts) or by tests; nothing here imports Bun.
 */
import type { GenerationCore } from "../generation/core.ts";
import type { AuthConfig, Principal } from "./auth.ts";
import type { Observer, RequestRecord } from "./observe.ts";

export interface ServerContext {
  core: GenerationCore;
  /** Largest request body in bytes (413 beyond). */
  maxBodyBytes: number;
  /** Longest a request body may take to arrive, in ms (408 beyond; 0 or absent: no limit). */
  bodyTimeoutMs?: number;
  /** Origins allowed to call the API from a browser (CORS); empty: no CORS headers. */
  corsOrigins?: readonly string[];
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
