/** GET /v1/models and /v1/models/{id}: the base model and every adapter, with the adapter's state. */
import type { Hono } from "hono";
import type { EngineStats } from "../../engine/engine.ts";
import { MultiloraError } from "../../errors.ts";
import { floatDTypeName } from "../../formats/dtypes.ts";
import type { AdapterListing } from "../../lora/registry.ts";
import type { Principal } from "../auth.ts";
import type { AppEnv, ServerContext } from "../context.ts";
import { documented, routeDocs } from "../openapi.ts";
import { encodeMsgpack, MSGPACK, reply, wantsMsgpack } from "../wire.ts";

/** An adapter as /v1/models and /v1/lora/adapters describe it (`stats`: the engine's, read once per listing). */
export function describeAdapter(
  ctx: ServerContext,
  listing: AdapterListing,
  stats: EngineStats = ctx.core.engine.stats(),
) {
  const v = listing.version;
  const task = v ? stats.tasks.find((t) => t.taskId === v.taskId) : undefined;
  const estimated = !ctx.core.engine.capabilities.loraTaskListing;
  const cached = v ? (estimated ? ctx.core.isCached(v.taskId) : task !== undefined) : false;
  return {
    name: listing.name,
    format: listing.format,
    state: task?.pinned ? "pinned" : cached ? "cached" : "on_disk",
    state_estimated: estimated,
    active_requests: task?.active ?? 0,
    ...(v
      ? {
          version: v.sha256.slice(0, 16),
          task_id: Number(v.taskId),
          rank: Math.max(...v.ranks),
          ranks: v.ranks,
          modules: v.modules,
          layers: v.layers,
          dtype: floatDTypeName(v.dtype),
          bytes: v.bytes,
          base_model: v.baseModel ?? null,
          warnings: v.warnings,
          loaded_at: Math.floor(v.loadedAt.getTime() / 1000),
          last_used_step: task?.lastUse ?? null,
        }
      : {}),
  };
}

export function modelRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  const base = () => ({
    id: ctx.core.servedNames[0],
    object: "model",
    created: ctx.created,
    owned_by: "multilora",
    root: ctx.core.servedNames[0],
    parent: null,
  });
  const adapterModel = (listing: AdapterListing, stats?: EngineStats) => ({
    id: listing.name,
    object: "model",
    created: ctx.created,
    owned_by: "multilora",
    root: ctx.core.servedNames[0],
    parent: ctx.core.servedNames[0],
    lora: describeAdapter(ctx, listing, stats),
  });
  /** The adapters `principal` may use (a tenant's key sees only its own). */
  const visible = (principal: Principal | null) =>
    (ctx.core.registry?.list("this-turn") ?? []).filter(
      (l) => !principal?.adapters || principal.adapters.has(l.name),
    );
  const listings = new ListingCache();
  app.get(
    "/v1/models",
    documented(routeDocs.models, (c) => {
      const principal = c.get("principal");
      return listings.reply(c.req.raw, principal, ctx, () => {
        const stats = ctx.core.engine.stats();
        return {
          object: "list",
          data: [base(), ...visible(principal).map((l) => adapterModel(l, stats))],
        };
      });
    }),
  );
  app.get(
    "/v1/models/:id{.+}",
    documented(routeDocs.model, (c) => {
      const id = c.req.param("id") ?? "";
      if (ctx.core.servedNames.includes(id)) return reply(c.req.raw, { ...base(), id });
      const listing = visible(c.get("principal")).find((a) => a.name === id);
      if (!listing) {
        throw new MultiloraError(`model "${id}" does not exist`, {
          code: "model_not_found",
        });
      }
      return reply(c.req.raw, adapterModel(listing));
    }),
  );
}

/**
 * GET /v1/models answered from the bytes of the last identical listing: the same caller, the same adapter
 * listing (the registry hands back the same array while nothing changed on disk) and no engine event since
 * (the core's state key). Gateways poll it; most polls find nothing changed.
 */
class ListingCache {
  /** By caller (a tenant's key sees its own adapters) and wire format. */
  private readonly entries = new Map<string, { listing: unknown; engineKey: number; body: Uint8Array }>();

  reply(request: Request, principal: Principal | null, ctx: ServerContext, build: () => unknown): Response {
    const engineKey = ctx.core.engineStateKey();
    const msgpack = wantsMsgpack(request);
    const listing = ctx.core.registry?.list("this-turn");
    const who = `${principal?.name ?? ""}\u0000${msgpack}`;
    const headers = { "content-type": msgpack ? MSGPACK : "application/json" };
    const hit = this.entries.get(who);
    if (hit !== undefined && engineKey !== null && hit.engineKey === engineKey && hit.listing === listing)
      return new Response(hit.body, { headers });
    const value = build();
    const body = msgpack ? encodeMsgpack(value) : new TextEncoder().encode(JSON.stringify(value));
    if (engineKey !== null) this.entries.set(who, { listing, engineKey, body });
    return new Response(body, { headers });
  }
}
