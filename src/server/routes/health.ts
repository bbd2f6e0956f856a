/** Liveness and readiness: /health and /v1/health/live answer while the process runs; ready while it serves. */
import type { Hono } from "hono";
import type { AppEnv, ServerContext } from "../context.ts";
import { documented, routeDocs } from "../openapi.ts";
import { reply } from "../wire.ts";

export function healthRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.get(
    "/health",
    documented(routeDocs.health, (c) => reply(c.req.raw, { status: "ok" })),
  );
  app.get(
    "/v1/health/live",
    documented(routeDocs.live, (c) => reply(c.req.raw, { status: "live" })),
  );
  app.get(
    "/v1/health/ready",
    documented(routeDocs.ready, (c) => {
      const stats = ctx.core.engine.stats();
      const body = {
        status: ctx.isReady() ? "ready" : "not_ready",
        running: stats.running,
        queued: stats.queued,
      };
      return reply(c.req.raw, body, ctx.isReady() ? 200 : 503);
    }),
  );
}
