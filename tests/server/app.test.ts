/**
 * The HTTP app in-process (`app.request`, no socket) over the fake engine: admission answers from the app
 * itself, and an error after the stream began arrives in OpenAI's shape with its type and code.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEMO_PRESETS, writeDemoModel } from "../../src/engine/demo-model.ts";
import { EngineError } from "../../src/engine/engine.ts";
import { loadAuth } from "../../src/server/auth.ts";
import { fakeApp } from "../helpers/fake-app.ts";
import { FakeEngine, settle } from "../helpers/fake-engine.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-app-"));
let modelDir: string;
beforeAll(() => {
  modelDir = writeDemoModel(join(work, "model")).dir;
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

function appOver(engine: FakeEngine, maxRequests: number) {
  return fakeApp(engine, modelDir, { maxRequests }).app;
}

const post = (body: unknown, route = "/v1/completions") =>
  new Request(`http://test${route}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });

test("--max-queue is enforced by the app itself: one request over the limit is a 503 overloaded", async () => {
  const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
  const app = appOver(engine, 1);
  const held = app.request(post({ model: "demo", prompt: [1, 2], max_tokens: 5, stream: true }));
  await settle();
  const over = await app.request(post({ model: "demo", prompt: [1, 2], max_tokens: 5 }));
  expect(over.status).toBe(503);
  expect(over.headers.get("retry-after")).toBe("1");
  expect(((await over.json()) as { error: { code: string; type: string } }).error).toMatchObject({
    code: "overloaded",
    type: "overloaded_error",
  });
  engine.runToEnd();
  const text = await (await held).text();
  expect(text.trim().endsWith("data: [DONE]")).toBe(true);
  await settle();
  engine.runToEnd();
  const after = app.request(post({ model: "demo", prompt: [1, 2], max_tokens: 2 }));
  await settle();
  engine.runToEnd();
  expect((await after).status).toBe(200);
});

test("an engine error after the first token ends the stream with the error's type and code", async () => {
  const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
  const app = appOver(engine, 4);
  const pending = app.request(post({ model: "demo", prompt: [1, 2], max_tokens: 50, stream: true }));
  await settle();
  engine.step();
  const response = await pending;
  expect(response.status).toBe(200);
  engine.step();
  await settle();
  engine.failRunning(new EngineError("INTERNAL", "out of memory in a step"));
  const lines = (await response.text()).split("\n\n").filter((l) => l.startsWith("data: "));
  const last = JSON.parse((lines.at(-1) as string).slice(6));
  expect(last).toEqual({
    error: { message: "out of memory in a step", type: "server_error", param: null, code: "internal" },
  });
  expect(lines.some((l) => l === "data: [DONE]")).toBe(false);
});

test("a field that would change the output and is not implemented is a 400 naming it, never ignored", async () => {
  const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
  const app = appOver(engine, 4);
  const response = await app.request(
    post(
      { model: "demo", messages: [{ role: "user", content: "hi" }], min_tokens: 4 },
      "/v1/chat/completions",
    ),
  );
  expect(response.status).toBe(400);
  const { error } = (await response.json()) as { error: Record<string, unknown> };
  expect(error).toMatchObject({
    type: "invalid_request_error",
    code: "unsupported_field",
    param: "min_tokens",
  });
  expect(engine.enqueued).toHaveLength(0);
});

test("structured output on a backend without it is a 501 naming the field, never a free-text answer", async () => {
  const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
  const app = appOver(engine, 4);
  const response = await app.request(
    post(
      {
        model: "demo",
        messages: [{ role: "user", content: "hi" }],
        response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "object" } } },
      },
      "/v1/chat/completions",
    ),
  );
  expect(response.status).toBe(501);
  const { error } = (await response.json()) as { error: Record<string, unknown> };
  expect(error).toMatchObject({
    type: "not_implemented_error",
    code: "unsupported",
    param: "response_format",
  });
  expect(engine.enqueued).toHaveLength(0);
});

test("a route asked with another method is a 405 naming the methods it answers, with Allow", async () => {
  const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
  const app = appOver(engine, 4);
  const get = await app.request("http://test/v1/chat/completions");
  expect(get.status).toBe(405);
  expect(get.headers.get("allow")).toBe("POST");
  expect(((await get.json()) as { error: { code: string } }).error.code).toBe("method_not_allowed");
  const load = await app.request("http://test/v1/lora/adapters/x/load");
  expect(load.status).toBe(405);
  expect((await app.request("http://test/v1/nothing")).status).toBe(404);
  expect((await app.request("http://test/v1/models", { method: "DELETE" })).headers.get("allow")).toBe("GET");
});

test("metrics and logs name routes by their pattern; logs carry the tenant and the model asked for; durations are observed", async () => {
  const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
  const lines: string[] = [];
  const { app, observer } = fakeApp(engine, modelDir, {
    auth: loadAuth({ apiKeys: ["sk-test-key-1"], keysFile: null, adminKey: null, protectMetrics: false }),
    log: (l) => lines.push(l),
  });
  const auth = { authorization: "Bearer sk-test-key-1" };
  expect((await app.request("http://test/v1/models/nope", { headers: auth })).status).toBe(404);
  const missing = await app.request(
    new Request("http://test/v1/completions", {
      method: "POST",
      headers: { ...auth, "content-type": "application/json" },
      body: JSON.stringify({ model: "no-such-adapter", prompt: [1] }),
    }),
  );
  expect(missing.status).toBe(404);
  const logged = lines.map((l) => JSON.parse(l));
  expect(logged.map((l) => [l.route, l.status, l.tenant, l.model])).toEqual([
    ["/v1/models/{id}", 404, "key-1", null],
    ["/v1/completions", 404, "key-1", "no-such-adapter"],
  ]);
  const metrics = await observer.metricsText();
  expect(metrics).toContain('multilora_requests_total{route="/v1/models/{id}",status="404",adapter=""} 1');
  expect(metrics).toContain('multilora_request_duration_seconds_count{route="/v1/completions"} 1');
});

test("--cors-origin: a browser's preflight is answered before auth, and allowed origins get their header", async () => {
  const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
  const { app } = fakeApp(engine, modelDir, {
    auth: loadAuth({ apiKeys: ["sk-test-key-1"], keysFile: null, adminKey: null, protectMetrics: false }),
    corsOrigins: ["https://app.example"],
  });
  const preflight = await app.request("http://test/v1/chat/completions", {
    method: "OPTIONS",
    headers: {
      origin: "https://app.example",
      "access-control-request-method": "POST",
      "access-control-request-headers": "authorization, content-type",
    },
  });
  expect(preflight.status).toBe(204);
  expect(preflight.headers.get("access-control-allow-origin")).toBe("https://app.example");
  expect(preflight.headers.get("access-control-allow-headers")).toContain("authorization");
  const allowed = await app.request("http://test/v1/models", {
    headers: { origin: "https://app.example", authorization: "Bearer sk-test-key-1" },
  });
  expect(allowed.status).toBe(200);
  expect(allowed.headers.get("access-control-allow-origin")).toBe("https://app.example");
  const other = await app.request("http://test/v1/models", {
    headers: { origin: "https://evil.example", authorization: "Bearer sk-test-key-1" },
  });
  expect(other.headers.get("access-control-allow-origin")).toBeNull();
  // Without --cors-origin no CORS header is sent.
  const plain = appOver(engine, 4);
  expect(
    (await plain.request("http://test/health", { headers: { origin: "https://app.example" } })).headers.get(
      "access-control-allow-origin",
    ),
  ).toBeNull();
});
