/**
 * vLLM's runtime LoRA routes, for gateways and tools made for vLLM (the Gateway API Inference Extension's
 * LoRA sidecar): `POST /v1/load_lora_adapter {lora_name, lora_path}` serves the adapter at `lora_path` as
 * `lora_name` (the path, links resolved, inside the LoRA dir or a dir of --allowed-lora-paths) and loads
 * it into the engine; `POST /v1/unload_lora_adapter {lora_name}` releases it (an adapter of the LoRA dir
 * stays served from disk; one loaded by path is forgotten). As vLLM: 200 with a text body; 400 for a
 * missing field or a name already served; 404 for an unknown name on unload. Admin routes (auth.ts).
 */
import type { Hono } from "hono";
import { LoadLoraAdapterRequestSchema, UnloadLoraAdapterRequestSchema } from "../../api/schemas.ts";
import { MultiloraError } from "../../errors.ts";
import { readBody } from "../body.ts";
import type { AppEnv, ServerContext } from "../context.ts";
import { documented, routeDocs } from "../openapi.ts";

function text(message: string): Response {
  return new Response(message, { headers: { "content-type": "text/plain; charset=utf-8" } });
}

export function vllmAdapterRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  const registryOf = () => {
    if (!ctx.core.registry) {
      throw new MultiloraError("this server has no LoRA dir (multilora serve <model-dir> <lora-dir>)", {
        code: "lora_not_found",
      });
    }
    return ctx.core.registry;
  };
  const options = () => ({ timeoutMs: ctx.bodyTimeoutMs });

  app.post(
    "/v1/load_lora_adapter",
    documented(routeDocs.vllmLoad, async (c) => {
      const registry = registryOf();
      const body = await readBody(c.req.raw, LoadLoraAdapterRequestSchema, ctx.maxBodyBytes, options());
      const version = await registry.add(body.lora_name, body.lora_path);
      try {
        await ctx.core.loadAdapter(version);
      } catch (e) {
        registry.remove(body.lora_name);
        throw e;
      }
      return text(`Success: LoRA adapter '${body.lora_name}' added successfully.`);
    }),
  );

  app.post(
    "/v1/unload_lora_adapter",
    documented(routeDocs.vllmUnload, async (c) => {
      const registry = registryOf();
      const { lora_name: name } = await readBody(
        c.req.raw,
        UnloadLoraAdapterRequestSchema,
        ctx.maxBodyBytes,
        options(),
      );
      if (!registry.has(name)) {
        throw new MultiloraError(`The lora adapter '${name}' cannot be found.`, {
          code: "lora_not_found",
          param: "lora_name",
        });
      }
      const version = registry.loaded(name);
      if (version && ctx.core.engine.capabilities.loraRelease) {
        await ctx.core.releaseAdapter(version);
        ctx.observer.released(version.taskId);
      }
      if (registry.isAdded(name)) registry.remove(name);
      else registry.unload(name);
      return text(`Success: LoRA adapter '${name}' removed successfully.`);
    }),
  );
}
