/**
 * API keys: `--api-key` (or MULTILORA_API_KEY) guards every route but the health checks, the API
 * document and docs page, and /metrics (unless --protect-metrics). `--api-keys-file` gives keys that may
 * use only some adapters (a request for another is a 403, and /v1/models lists only what the key may
 * use): one server, many tenants. `--admin-key` guards the adapter admin routes (/v1/lora/*, and vLLM's
 * /v1/load_lora_adapter and /v1/unload_lora_adapter), which without it answer loopback clients only.
 * With tenant keys, /metrics (which names every adapter) and the admin routes need the admin key (403
 * when none is set) unless `--open-admin-routes`: a tenant must not see other tenants' adapters nor
 * unload them. Keys are compared in constant time (as SHA-256 digests).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { Context, Hono, MiddlewareHandler } from "hono";
import * as v from "valibot";
import { MultiloraError } from "../errors.ts";
import { parseWith, readJson } from "../formats/json-file.ts";
import type { AppEnv } from "./context.ts";

/** Who a request is: the key's name and the adapters it may use (null: every adapter). */
export interface Principal {
  name: string;
  adapters: ReadonlySet<string> | null;
  admin: boolean;
}

export interface AuthConfig {
  /** sha256(key) -> principal. Empty: no keys, every route open (admin routes: loopback only). */
  keys: Map<string, Principal>;
  /** sha256 of the admin keys. */
  adminKeys: string[];
  protectMetrics: boolean;
  /** Tenant keys are set and not opted out: /metrics and the admin routes need the admin key. */
  adminOnly: boolean;
}

export const KeysFileSchema = v.object({
  keys: v.array(
    v.object({
      key: v.pipe(v.string(), v.minLength(8)),
      name: v.optional(v.string()),
      adapters: v.optional(v.union([v.literal("*"), v.array(v.string())]), "*"),
    }),
  ),
});

function digest(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}

export function loadAuth(options: {
  apiKeys: string[];
  keysFile?: string | null;
  adminKey?: string | null;
  protectMetrics?: boolean;
  openAdminRoutes?: boolean;
}): AuthConfig {
  const keys = new Map<string, Principal>();
  options.apiKeys.forEach((key, i) => {
    keys.set(digest(key), { name: `key-${i + 1}`, adapters: null, admin: false });
  });
  if (options.keysFile) {
    const file = parseWith(KeysFileSchema, readJson(options.keysFile), options.keysFile);
    file.keys.forEach((k, i) => {
      keys.set(digest(k.key), {
        name: k.name ?? `tenant-${i + 1}`,
        adapters: k.adapters === "*" ? null : new Set(k.adapters),
        admin: false,
      });
    });
  }
  const adminKeys = options.adminKey ? [digest(options.adminKey)] : [];
  return {
    keys,
    adminKeys,
    protectMetrics: options.protectMetrics ?? false,
    adminOnly: Boolean(options.keysFile) && !options.openAdminRoutes,
  };
}

/** Looks `presented` up among `digests` comparing every one in constant time. */
function find(presented: string, digests: Iterable<string>): string | undefined {
  const mine = Buffer.from(digest(presented), "hex");
  let found: string | undefined;
  for (const d of digests) {
    if (timingSafeEqual(mine, Buffer.from(d, "hex"))) found = d;
  }
  return found;
}

const PUBLIC = new Set(["/health", "/v1/health/live", "/v1/health/ready", "/openapi.json"]);
/** vLLM's runtime LoRA routes, admin routes as /v1/lora/*. */
const VLLM_ADMIN = new Set(["/v1/load_lora_adapter", "/v1/unload_lora_adapter"]);
const LOOPBACK = new Set(["127.0.0.1", "::1", "::ffff:127.0.0.1"]);

function bearer(c: Context): string | undefined {
  const header = c.req.header("authorization");
  const m = header ? /^Bearer\s+(.+)$/i.exec(header.trim()) : null;
  return m?.[1] ?? c.req.header("x-api-key") ?? undefined;
}

const unauthorized = (why: string) =>
  new MultiloraError(`${why}: send "Authorization: Bearer <key>"`, {
    code: "invalid_api_key",
  });

/** Sets the request's principal (`c.get("principal")`), or answers 401 / 403. */
export function authMiddleware(auth: AuthConfig): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const path = c.req.path;
    const isAdmin = path.startsWith("/v1/lora/") || VLLM_ADMIN.has(path);
    const adminOnly = isAdmin || (auth.adminOnly && path === "/metrics");
    if (adminOnly) {
      const what = isAdmin ? "the adapter admin routes" : "/metrics";
      if (auth.adminKeys.length > 0) {
        const presented = bearer(c);
        if (!presented || !find(presented, auth.adminKeys)) throw unauthorized(`${what} need the admin key`);
        c.set("principal", { name: "admin", adapters: null, admin: true });
      } else if (auth.adminOnly) {
        throw new MultiloraError(
          `with tenant keys (--api-keys-file), ${what} need the admin key: start the server with --admin-key (or --open-admin-routes)`,
          { code: "admin_key_required" },
        );
      } else {
        const address = c.env?.remoteAddress;
        if (address !== undefined && !LOOPBACK.has(address)) {
          throw new MultiloraError(
            "the adapter admin routes answer loopback clients only (or start the server with --admin-key)",
            {
              code: "admin_loopback_only",
            },
          );
        }
        c.set("principal", null);
      }
      return next();
    }
    const open =
      auth.keys.size === 0 ||
      PUBLIC.has(path) ||
      path === "/docs" ||
      path.startsWith("/docs/") ||
      (path === "/metrics" && !auth.protectMetrics);
    if (open) {
      c.set("principal", null);
      return next();
    }
    const presented = bearer(c);
    if (!presented) throw unauthorized("this server needs an API key");
    const match = find(presented, auth.keys.keys());
    if (!match) throw unauthorized("the API key is not valid");
    c.set("principal", auth.keys.get(match) ?? null);
    return next();
  };
}

/**
 * Mounts the auth middleware where it has something to decide: on every route when there are API keys (or
 * tenant keys put /metrics behind the admin key), else on the admin routes alone (the admin key or the
 * loopback check), so an open server's other routes pay nothing for it.
 */
export function mountAuth(app: Hono<AppEnv>, auth: AuthConfig): void {
  const middleware = authMiddleware(auth);
  if (auth.keys.size > 0 || auth.adminOnly) {
    app.use("*", middleware);
    return;
  }
  for (const path of ["/v1/lora/*", ...VLLM_ADMIN]) app.use(path, middleware);
}

/** 403 unless `principal` may use `adapter`. */
export function checkAdapterAllowed(principal: Principal | null | undefined, adapter: string): void {
  if (principal?.adapters && !principal.adapters.has(adapter)) {
    throw new MultiloraError(`this API key may not use adapter "${adapter}"`, {
      code: "adapter_not_allowed",
      param: "lora_model",
    });
  }
}
