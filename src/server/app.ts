/**
 * The HTTP app: a Hono app built by a factory with the engine and its surroundings injected. It uses
 * web-standard Request / Response only (no Bun import), so tests drive it with `app.request()` and the
 * CLI serves it with `Bun.serve`.
 */
import { Hono } from "hono";
import { cors } from "hono/cors";
import { MultiloraError } from "../errors.ts";
import { mountAuth } from "./auth.ts";
import type { AppEnv, ServerContext } from "./context.ts";
import { errorResponse } from "./errors.ts";
import { adapterRoutes } from "./routes/adapters.ts";
import { chatRoutes } from "./routes/chat.ts";
import { completionRoutes } from "./routes/completions.ts";
import { docsRoutes } from "./routes/docs.ts";
import { healthRoutes } from "./routes/health.ts";
import { modelRoutes } from "./routes/models.ts";
import { vllmAdapterRoutes } from "./routes/vllm-adapters.ts";

/** A route as metrics and logs name it: `/v1/models/{id}`, not Hono's `/v1/models/:id{.+}`. */
export function routeLabel(routePath: string): string {
  return routePath.replace(/:(\w+)(\{[^}]*\})?/g, "{$1}");
}

/** The methods `path` answers (none: no such route). */
function methodsOf(app: Hono<AppEnv>, path: string): string[] {
  const methods = new Set<string>();
  for (const r of app.routes) {
    if (r.method !== "ALL" && routeRegExp(r.path).test(path)) methods.add(r.method); // ALL: middleware
  }
  return [...methods];
}

/** A Hono route path as a regular expression: `:name` is one segment, `:name{re}` is `re`. */
function routeRegExp(routePath: string): RegExp {
  const literal = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  let source = "";
  let last = 0;
  for (const m of routePath.matchAll(/:\w+(?:\{([^}]*)\})?/g)) {
    source += literal(routePath.slice(last, m.index)) + (m[1] === undefined ? "[^/]+" : `(?:${m[1]})`);
    last = (m.index ?? 0) + m[0].length;
  }
  return new RegExp(`^${source}${literal(routePath.slice(last))}$`);
}

export function createApp(ctx: ServerContext): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.onError((err, c) => errorResponse(err, c.req.raw));
  app.notFound((c) => {
    const allowed = methodsOf(app, c.req.path);
    if (allowed.length > 0) {
      const response = errorResponse(
        new MultiloraError(`${c.req.path} answers ${allowed.join(", ")}, not ${c.req.method}`, {
          code: "method_not_allowed",
        }),
        c.req.raw,
      );
      response.headers.set("allow", allowed.join(", "));
      return response;
    }
    return errorResponse(
      new MultiloraError(`no route ${c.req.method} ${c.req.path}`, { code: "route_not_found" }),
      c.req.raw,
    );
  });
  // Every request is recorded; a stream's record ends with its last byte (the route ends it).
  const labels = new Map<string, string>();
  app.use("*", async (c, next) => {
    const record = ctx.observer.start(c.req.path);
    c.set("record", record);
    await next();
    record.route = labels.get(c.req.routePath) ?? routeLabel(c.req.routePath);
    labels.set(c.req.routePath, record.route);
    record.tenant = c.get("principal")?.name ?? null;
    if (!record.streaming) ctx.observer.end(record, c.res.status);
  });
  // Before auth: a browser's preflight carries no key.
  if (ctx.corsOrigins && ctx.corsOrigins.length > 0) {
    const origins = [...ctx.corsOrigins];
    app.use(
      "*",
      cors({
        origin: origins.includes("*") ? "*" : origins,
        allowHeaders: ["authorization", "x-api-key", "content-type", "accept"],
        allowMethods: ["GET", "POST", "OPTIONS"],
        maxAge: 600,
      }),
    );
  }
  if (ctx.auth) mountAuth(app, ctx.auth); // (an app built only to be described has no auth)
  app.get(
    "/metrics",
    async () =>
      new Response(await ctx.observer.metricsText(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      }),
  );
  healthRoutes(app, ctx);
  docsRoutes(app);
  modelRoutes(app, ctx);
  chatRoutes(app, ctx);
  completionRoutes(app, ctx);
  adapterRoutes(app, ctx);
  vllmAdapterRoutes(app, ctx);
  return app;
}
