/**
 * Shutdown (what SIGTERM runs: RunningServer.stop): nothing new is admitted, a request still queued in the
 * engine is answered 503 with Retry-After at once, running ones may finish until --drain-timeout, then a
 * stream ends with an error event (no [DONE]) and a whole response is a 503, each recorded as 503.
 */
import { expect, test } from "bun:test";
import { startTestServer } from "../helpers/server.ts";

const body = (extra: Record<string, unknown>) =>
  JSON.stringify({ model: "demo-all", prompt: "hi", max_tokens: 4000, temperature: 0, ...extra });

test("drain: queued requests get a 503 at once, running ones are ended with an error at the drain timeout", async () => {
  const t = await startTestServer({ "max-seq-len": 4096, "max-batch": 2, "drain-timeout": 0.6 });
  const url = `${t.server.url}/v1/completions`;
  const send = (extra: Record<string, unknown>) =>
    fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: body(extra) });
  const stream = await send({ stream: true }); // running: its status came with its first token
  expect(stream.status).toBe(200);
  const whole = send({}); // running, not streamed
  await new Promise((resolve) => setTimeout(resolve, 100));
  const queued = send({}); // max-batch 2: waits in the engine's queue
  const engine = t.server.ctx.core.engine;
  for (let i = 0; i < 100 && engine.stats().queued < 1; i++) await new Promise((r) => setTimeout(r, 10));
  expect(engine.stats()).toMatchObject({ running: 2, queued: 1 });

  const drainStarted = performance.now();
  const closing = t.close();
  const q = await queued;
  expect(performance.now() - drainStarted).toBeLessThan(300);
  expect(q.status).toBe(503);
  expect(q.headers.get("retry-after")).toBe("1");
  expect(((await q.json()) as { error: { code: string } }).error.code).toBe("shutting_down");

  const w = await whole;
  expect(performance.now() - drainStarted).toBeGreaterThan(500);
  expect(w.status).toBe(503);
  expect(((await w.json()) as { error: { code: string } }).error.code).toBe("shutting_down");
  const text = await stream.text();
  const events = text.trim().split("\n\n");
  expect(events.at(-1)).toContain('"code":"shutting_down"');
  expect(text).not.toContain("[DONE]");
  await closing;
  expect(performance.now() - drainStarted).toBeLessThan(3000);

  const counts = (
    await t.server.ctx.observer.registry.getSingleMetric("multilora_requests_total")?.get()
  )?.values
    .filter((v) => v.labels.route === "/v1/completions")
    .map((v) => [v.labels.status, v.value]);
  expect(Object.fromEntries(counts ?? [])).toEqual({ "503": 3 });
});

test("drain with nothing running ends at once, and a request after it is a 503", async () => {
  const t = await startTestServer({ "drain-timeout": 5 });
  const core = t.server.ctx.core;
  const started = performance.now();
  await core.drain(5000);
  expect(performance.now() - started).toBeLessThan(100);
  const r = await fetch(`${t.server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: body({ max_tokens: 2 }),
  });
  expect(r.status).toBe(503);
  await t.close();
});
