/** API keys, per-tenant adapter rights, and the admin key, on a real server. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { serveConfig } from "../../src/commands/serve.ts";
import { startTestServer, type TestServer } from "../helpers/server.ts";

const KEY = "sk-test-open-1234";
const TENANT = "sk-tenant-only-demo-all";
const ADMIN = "sk-admin-5678";
let t: TestServer;
beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), "multilora-keys-"));
  const keysFile = join(dir, "keys.json");
  writeFileSync(
    keysFile,
    JSON.stringify({ keys: [{ key: TENANT, name: "tenant-a", adapters: ["demo-all"] }] }),
  );
  t = await startTestServer({ "api-key": [KEY], "api-keys-file": keysFile, "admin-key": ADMIN });
});
afterAll(async () => {
  await t?.close();
});

const get = (path: string, key?: string) =>
  fetch(`${t.server.url}${path}`, { headers: key ? { authorization: `Bearer ${key}` } : {} });
const postAs = (path: string, body: unknown, key?: string) =>
  fetch(`${t.server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify(body),
  });
const error = async (r: Response) =>
  ((await r.json()) as { error: { type: string; code: string; message: string } }).error;

describe("API keys", () => {
  test("no key or a wrong key is a 401 in OpenAI's shape; the right key passes; health checks stay open", async () => {
    const none = await get("/v1/models");
    expect(none.status).toBe(401);
    expect(await error(none)).toMatchObject({ type: "authentication_error", code: "invalid_api_key" });
    const wrong = await get("/v1/models", "sk-wrong-key-0000");
    expect(wrong.status).toBe(401);
    expect((await error(wrong)).message).toContain("the API key is not valid");
    expect((await get("/v1/models", KEY)).status).toBe(200);
    for (const path of ["/health", "/v1/health/live", "/v1/health/ready"])
      expect((await get(path)).status).toBe(200);
    const chat = await postAs("/v1/chat/completions", {
      model: "llama",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 2,
    });
    expect(chat.status).toBe(401);
  });

  test("the openai client with a key works; without one it sees an AuthenticationError", async () => {
    const client = new OpenAI({ baseURL: `${t.server.url}/v1`, apiKey: KEY, maxRetries: 0 });
    const r = await client.chat.completions.create({
      model: "demo-attention",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 2,
    });
    expect(r.choices.length).toBe(1);
    const anonymous = new OpenAI({ baseURL: `${t.server.url}/v1`, apiKey: "sk-nobody-1234", maxRetries: 0 });
    const err = await anonymous.models.list().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.AuthenticationError);
  });
});

describe("tenants", () => {
  test("a tenant key sees and uses only its adapters; another adapter is a 403", async () => {
    const models = (await (await get("/v1/models", TENANT)).json()) as { data: { id: string }[] };
    expect(models.data.map((m) => m.id)).toEqual(["model", "demo-all"]);
    expect((await get("/v1/models/demo-attention", TENANT)).status).toBe(404);
    const allowed = await postAs(
      "/v1/completions",
      { model: "demo-all", prompt: [1], max_tokens: 2 },
      TENANT,
    );
    expect(allowed.status).toBe(200);
    const denied = await postAs(
      "/v1/completions",
      { model: "llama", lora_model: "demo-attention", prompt: [1], max_tokens: 2 },
      TENANT,
    );
    expect(denied.status).toBe(403);
    expect(await error(denied)).toMatchObject({ type: "permission_error", code: "adapter_not_allowed" });
    // The refused request is counted under the adapter it asked for (which exists).
    expect(await t.server.ctx.observer.metricsText()).toContain(
      'multilora_requests_total{route="/v1/completions",status="403",adapter="demo-attention"} 1',
    );
    const base = await postAs("/v1/completions", { model: "llama", prompt: [1], max_tokens: 2 }, TENANT);
    expect(base.status).toBe(200);
  });
});

describe("the admin key", () => {
  test("guards the adapter admin routes; an API key is not enough", async () => {
    expect((await get("/v1/lora/adapters")).status).toBe(401);
    expect((await get("/v1/lora/adapters", KEY)).status).toBe(401);
    const ok = await get("/v1/lora/adapters", ADMIN);
    expect(ok.status).toBe(200);
    const load = await postAs("/v1/lora/adapters/demo-all/load", {}, ADMIN);
    expect(load.status).toBe(200);
  });
});

test("MULTILORA_API_KEY sets the key; a key is taken whole, commas included", () => {
  const before = process.env.MULTILORA_API_KEY;
  process.env.MULTILORA_API_KEY = "sk-from-env-9999";
  try {
    expect(serveConfig([]).config["api-key"]).toEqual(["sk-from-env-9999"]);
    expect(serveConfig(["--api-key", "sk-a,with,commas"]).config["api-key"]).toEqual(["sk-a,with,commas"]);
  } finally {
    if (before === undefined) delete process.env.MULTILORA_API_KEY;
    else process.env.MULTILORA_API_KEY = before;
  }
});

test("/metrics is open unless --protect-metrics, but with tenant keys it needs the admin key unless --open-admin-routes", async () => {
  // This server has --api-keys-file: /metrics names every adapter, so a tenant's key is not enough.
  expect((await get("/metrics")).status).toBe(401);
  expect((await get("/metrics", KEY)).status).toBe(401);
  expect((await get("/metrics", ADMIN)).status).toBe(200);
  const { createApp } = await import("../../src/server/app.ts");
  const ctx = t.server.ctx;
  const open = createApp({ ...ctx, auth: { ...ctx.auth, adminOnly: false } });
  expect((await open.request("/metrics", {}, {})).status).toBe(200);
  const app = createApp({ ...ctx, auth: { ...ctx.auth, adminOnly: false, protectMetrics: true } });
  expect((await app.request("/metrics", {}, {})).status).toBe(401);
  expect((await app.request("/metrics", { headers: { authorization: `Bearer ${KEY}` } }, {})).status).toBe(
    200,
  );
});

test("with tenant keys and no --admin-key, /metrics and the admin routes are refused, even from loopback", async () => {
  const { createApp } = await import("../../src/server/app.ts");
  const ctx = t.server.ctx;
  const app = createApp({ ...ctx, auth: { ...ctx.auth, adminKeys: [] } });
  const env = { remoteAddress: "127.0.0.1" };
  for (const [path, method] of [
    ["/metrics", "GET"],
    ["/v1/lora/adapters/demo-all/unload", "POST"],
  ] as const) {
    const r = await app.request(path, { method, headers: { authorization: `Bearer ${KEY}` } }, env);
    expect(r.status).toBe(403);
    expect(await error(r)).toMatchObject({ code: "admin_key_required" });
  }
  // The operator's opt-out: loopback admin and open metrics, as without tenants.
  const optedOut = createApp({ ...ctx, auth: { ...ctx.auth, adminKeys: [], adminOnly: false } });
  expect((await optedOut.request("/metrics", {}, env)).status).toBe(200);
});
