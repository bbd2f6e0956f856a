/**
 * The adapter admin routes: list, describe, load (optionally pinned), unload, validate. They need the
 * admin key, or without one answer loopback clients only (src/server/auth.ts). A route the backend
 * cannot honour answers 501 and says why.
 */
import type { Context, Hono } from "hono";
import { LoadAdapterRequestSchema } from "../../api/schemas.ts";
import { MultiloraError } from "../../errors.ts";
import type { LoraRegistry } from "../../lora/registry.ts";
import { readBody } from "../body.ts";
import type { AppEnv, ServerContext } from "../context.ts";
import { documented, routeDocs } from "../openapi.ts";
import { reply } from "../wire.ts";
import { describeAdapter } from "./models.ts";

function registryOf(ctx: ServerContext): LoraRegistry {
  if (!ctx.core.registry) {
    throw new MultiloraError("this server has no LoRA dir (multilora serve <model-dir> <lora-dir>)", {
      code: "lora_not_found",
    });
  }
  return ctx.core.registry;
}

/** The `:name` of an adapter route (always there: the route matched it). */
function adapterName(c: Context<AppEnv>): string {
  return c.req.param("name") ?? "";
}

function unsupported(what: string): MultiloraError {
  return new MultiloraError(what, { code: "unsupported" });
}

export function adapterRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.get(
    "/v1/lora/adapters",
    documented(routeDocs.adapters, (c) => {
      const registry = registryOf(ctx);
      const stats = ctx.core.engine.stats();
      return reply(c.req.raw, {
        object: "list",
        data: registry.list().map((l) => describeAdapter(ctx, l, stats)),
        cache: {
          bytes_used: stats.loraBytesUsed,
          bytes_capacity: stats.loraBytesCapacity,
          adapters: stats.loraTasks,
          max_adapters: stats.maxLoras || null,
          estimated: !ctx.core.engine.capabilities.loraTaskListing,
        },
      });
    }),
  );

  app.get(
    "/v1/lora/adapters/:name",
    documented(routeDocs.adapter, (c) => {
      const name = adapterName(c);
      registryOf(ctx).locate(name);
      const listing = registryOf(ctx)
        .list()
        .find((l) => l.name === name);
      return reply(c.req.raw, describeAdapter(ctx, listing ?? { name, format: "trtllm", path: "" }));
    }),
  );

  app.post(
    "/v1/lora/adapters/:name/load",
    documented(routeDocs.load, async (c) => {
      const registry = registryOf(ctx);
      const { pin } = await readBody(c.req.raw, LoadAdapterRequestSchema, ctx.maxBodyBytes, {
        optional: true,
        timeoutMs: ctx.bodyTimeoutMs,
      });
      if (pin && !ctx.core.engine.capabilities.loraPin)
        throw unsupported("this backend cannot pin adapters (TensorRT-LLM's executor has no pin call)");
      const version = await registry.get(adapterName(c));
      await ctx.core.loadAdapter(version, { pin });
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
    }),
  );

  app.post(
    "/v1/lora/adapters/:name/unload",
    documented(routeDocs.unload, async (c) => {
      const registry = registryOf(ctx);
      const name = adapterName(c);
      registry.locate(name);
      const version = registry.loaded(name);
      if (!ctx.core.engine.capabilities.loraRelease)
        throw unsupported("this backend cannot evict adapters on demand");
      if (version) {
        await ctx.core.releaseAdapter(version);
        ctx.observer.released(version.taskId);
        registry.unload(name); // its next use reads and hashes the file again
      }
      return reply(c.req.raw, { name, state: "on_disk" });
    }),
  );

  app.post(
    "/v1/lora/adapters/:name/validate",
    documented(routeDocs.validate, async (c) => {
      const name = adapterName(c);
      const { problems, warnings } = await registryOf(ctx).validate(name);
      return reply(c.req.raw, { name, valid: problems.length === 0, problems, warnings });
    }),
  );
}
