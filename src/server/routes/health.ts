/** Liveness and readiness: /health and /v1/health/live answer while the process runs; ready while it serves. */
import type { Hono } from "hono";
import type { AppEnv, ServerContext } from "../context.ts";

export function healthRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.get("/health", (c) => c.json({ status: "ok" }));
  app.get("/v1/health/live", (c) => c.json({ status: "live" }));
  app.get("/v1/health/ready", (c) => {
    const stats = ctx.engine.stats();
    const body = {
      status: ctx.isReady() ? "ready" : "not_ready",
      running: stats.running,
      queued: stats.queued,
    };
    return c.json(body, ctx.isReady() ? 200 : 503);
  });
}
