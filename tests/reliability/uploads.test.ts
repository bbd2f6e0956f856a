/**
 * Stalled uploads and greedy tenants: a request counts against --max-queue only once its body is in,
 * a body that stops arriving is a 408 after --body-timeout, and --max-concurrent-per-key keeps one key
 * from taking every place.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEMO_PRESETS, writeDemoModel } from "../../src/engine/demo-model.ts";
import { loadAuth } from "../../src/server/auth.ts";
import { fakeApp } from "../helpers/fake-app.ts";
import { FakeEngine, settle } from "../helpers/fake-engine.ts";
import { post, startTestServer, type TestServer } from "../helpers/server.ts";

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ "max-queue": 2, "body-timeout": 0.5 });
});
afterAll(async () => {
  await t?.close();
});

/** A connection that sends the headers of a 1000-byte body and 18 bytes of it, then nothing. */
async function stalledUpload(): Promise<{ socket: Socket; received: () => string; closed: Promise<void> }> {
  const { port } = new URL(t.server.url);
  const socket = connect(Number(port), "127.0.0.1");
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  let text = "";
  socket.on("data", (d) => {
    text += d.toString();
  });
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  socket.on("error", () => {});
  socket.write(
    'POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"model":"demo-all"',
  );
  return { socket, received: () => text, closed };
}

async function healthWithin(ms: number): Promise<void> {
  const started = performance.now();
  const r = await fetch(`${t.server.url}/health`);
  expect(r.status).toBe(200);
  expect(performance.now() - started).toBeLessThan(ms);
}

test("stalled uploads hold no place: with --max-queue 2, 32 of them do not lock anyone out", async () => {
  const uploads = await Promise.all(Array.from({ length: 32 }, () => stalledUpload()));
  await healthWithin(1000);
  for (let i = 0; i < 3; i++) {
    const r = await post(`${t.server.url}/v1/completions`, {
      model: "demo-all",
      prompt: "hi",
      max_tokens: 2,
    });
    expect(r.status).toBe(200);
  }
  expect(t.server.ctx.core.admission.size).toBe(0);
  for (const u of uploads) u.socket.destroy();
});

test("a body that stops arriving is a 408 after --body-timeout, and the connection is closed", async () => {
  const started = performance.now();
  const upload = await stalledUpload();
  await Promise.race([upload.closed, new Promise((resolve) => setTimeout(resolve, 3000))]);
  const elapsed = performance.now() - started;
  expect(elapsed).toBeGreaterThan(400);
  expect(elapsed).toBeLessThan(3000);
  expect(upload.received()).toStartWith("HTTP/1.1 408");
  expect(upload.received()).toContain("request_timeout");
  await healthWithin(1000);
});

test("--max-concurrent-per-key: one tenant at its limit gets a 429, another tenant is still served", async () => {
  const work = mkdtempSync(join(tmpdir(), "multilora-uploads-"));
  try {
    const modelDir = writeDemoModel(join(work, "model")).dir;
    const keysFile = join(work, "keys.json");
    writeFileSync(
      keysFile,
      JSON.stringify({
        keys: [
          { key: "sk-tenant-a-1111", name: "a" },
          { key: "sk-tenant-b-2222", name: "b" },
        ],
      }),
    );
    const engine = new FakeEngine({ vocab: DEMO_PRESETS.tiny.vocab, loraSlots: 1 });
    const { app } = fakeApp(engine, modelDir, {
      maxRequests: 8,
      maxPerKey: 2,
      auth: loadAuth({ apiKeys: [], keysFile, adminKey: null }),
    });
    const as = (key: string) =>
      app.request(
        new Request("http://test/v1/completions", {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
          body: JSON.stringify({ model: "demo", prompt: [1, 2], max_tokens: 3 }),
        }),
      );
    const held = [as("sk-tenant-a-1111"), as("sk-tenant-a-1111")];
    await settle();
    const over = await as("sk-tenant-a-1111");
    expect(over.status).toBe(429);
    expect(over.headers.get("retry-after")).toBe("1");
    expect(((await over.json()) as { error: { code: string } }).error.code).toBe("too_many_requests");
    const other = as("sk-tenant-b-2222");
    await settle();
    engine.runToEnd();
    expect((await other).status).toBe(200);
    for (const r of held) expect((await r).status).toBe(200);
    // Places come back when requests end.
    const again = as("sk-tenant-a-1111");
    await settle();
    engine.runToEnd();
    expect((await again).status).toBe(200);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
