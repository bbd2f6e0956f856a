/**
 * The adapter admin routes: list, describe, load (optionally pinned), unload, validate. They need the
 * admin key, or without one answer loopback clients only (src/server/auth.ts). A route the backend
 * cannot honour answers 501 and says why.
 */
import type { Hono } from "hono";
import { EngineError } from "../../engine/engine.ts";
import { MultiloraError } from "../../errors.ts";
import type { LoraRegistry } from "../../lora/registry.ts";
import { readBody } from "../body.ts";
import type { AppEnv, ServerContext } from "../context.ts";
import { routeDocs } from "../openapi.ts";
import { LoadAdapterRequestSchema } from "../schemas.ts";
import { reply } from "../wire.ts";
import { describeAdapter } from "./models.ts";

function registryOf(ctx: ServerContext): LoraRegistry {
  if (!ctx.registry) {
    throw new MultiloraError("this server has no LoRA dir (multilora serve <model-dir> <lora-dir>)", {
      status: 404,
      type: "not_found_error",
      code: "lora_not_found",
    });
  }
  return ctx.registry;
}

export function adapterRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.get("/v1/lora/adapters", routeDocs.adapters, (c) => {
    const registry = registryOf(ctx);
    const stats = ctx.engine.stats();
    return reply(c.req.raw, {
      object: "list",
      data: registry.list().map((l) => describeAdapter(ctx, l, stats)),
      cache: {
        bytes_used: stats.loraBytesUsed,
        bytes_capacity: stats.loraBytesCapacity,
        adapters: stats.loraTasks,
        max_adapters: stats.maxLoras || null,
        estimated: !ctx.engine.capabilities.loraTaskListing,
      },
    });
  });

  app.get("/v1/lora/adapters/:name", routeDocs.adapter, (c) => {
    const name = c.req.param("name");
    registryOf(ctx).locate(name);
    const listing = registryOf(ctx)
      .list()
      .find((l) => l.name === name);
    return reply(c.req.raw, describeAdapter(ctx, listing ?? { name, format: "trtllm", path: "" }));
  });

  app.post("/v1/lora/adapters/:name/load", routeDocs.load, async (c) => {
    const registry = registryOf(ctx);
    const { pin } = await readBody(c.req.raw, LoadAdapterRequestSchema, ctx.maxBodyBytes, { optional: true });
    if (pin && !ctx.engine.capabilities.loraPin) {
      throw new MultiloraError("this backend cannot pin adapters (TensorRT-LLM's executor has no pin call)", {
        status: 501,
        type: "not_implemented_error",
        code: "unsupported",
      });
    }
    const version = await registry.get(c.req.param("name"));
    // A one-token request carries the weights into the engine's cache.
    const started = await ctx.adapters.start(
      { prompt: [0], maxNewTokens: 1, temperature: 0 },
      version,
      "always",
    );
    for (let e = await started.rest.next(); !e.done; e = await started.rest.next()) {}
    if (pin) {
      try {
        ctx.engine.loraPin(version.taskId, true);
      } catch (e) {
        if (e instanceof EngineError && e.engineCode === "LORA_CACHE_FULL") {
          throw new MultiloraError(e.message, { status: 409, code: "pin_limit" });
        }
        throw e;
      }
    }
    return reply(
      c.req.raw,
      describeAdapter(
        ctx,
        registry.list().find((l) => l.name === version.name) ?? {
          name: version.name,
          format: version.format,
          path: version.path,
        },
      ),
    );
  });

  app.post("/v1/lora/adapters/:name/unload", routeDocs.unload, async (c) => {
    const registry = registryOf(ctx);
    const name = c.req.param("name");
    registry.locate(name);
    const version = registry.loaded(name);
    if (!ctx.engine.capabilities.loraRelease) {
      throw new MultiloraError("this backend cannot evict adapters on demand", {
        status: 501,
        type: "not_implemented_error",
        code: "unsupported",
      });
    }
    if (version && ctx.engine.stats().tasks.some((t) => t.taskId === version.taskId)) {
      ctx.engine.loraRelease(version.taskId);
      ctx.observer.released(version.taskId);
      // Released at once when idle, else when its running requests end: wait for that.
      while (ctx.engine.stats().tasks.some((t) => t.taskId === version.taskId))
        await new Promise((r) => setTimeout(r, 10));
    }
    return reply(c.req.raw, { name, state: "on_disk" });
  });

  app.post("/v1/lora/adapters/:name/validate", routeDocs.validate, async (c) => {
    const name = c.req.param("name");
    const { problems, warnings } = await registryOf(ctx).validate(name);
    return reply(c.req.raw, { name, valid: problems.length === 0, problems, warnings });
  });
}
