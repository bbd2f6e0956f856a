/**
 * The HTTP app: a Hono app built by a factory with the engine and its surroundings injected. It uses
 * web-standard Request / Response only (no Bun import), so tests drive it with `app.request()` and the
 * CLI serves it with `Bun.serve`.
 */
import { Hono } from "hono";
import { MultiloraError } from "../errors.ts";
import { authMiddleware } from "./auth.ts";
import type { AppEnv, ServerContext } from "./context.ts";
import { errorResponse } from "./errors.ts";
import { adapterRoutes } from "./routes/adapters.ts";
import { chatRoutes } from "./routes/chat.ts";
import { completionRoutes } from "./routes/completions.ts";
import { docsRoutes } from "./routes/docs.ts";
import { healthRoutes } from "./routes/health.ts";
import { modelRoutes } from "./routes/models.ts";
import { vllmAdapterRoutes } from "./routes/vllm-adapters.ts";

export function createApp(ctx: ServerContext): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.onError((err, c) => errorResponse(err, c.req.raw));
  app.notFound((c) =>
    errorResponse(
      new MultiloraError(`no route ${c.req.method} ${c.req.path}`, {
        code: "route_not_found",
      }),
      c.req.raw,
    ),
  );
  // Every request is recorded; a stream's record ends with its last byte (the route ends it).
  app.use("*", async (c, next) => {
    const record = ctx.observer.start(c.req.path);
    c.set("record", record);
    await next();
    record.route = c.req.routePath;
    if (
      !(c.res.body instanceof ReadableStream && c.res.headers.get("cache-control") === "no-cache") ||
      c.res.status !== 200
    ) {
      ctx.observer.end(record, c.res.status);
    }
  });
  app.use("*", authMiddleware(ctx.auth));
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
