/** GET /metrics after a known sequence of requests: exact values, text that parses; and the request log. */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createLogger, Observer } from "../../src/server/observe.ts";
import { post, startTestServer, type TestServer } from "../helpers/server.ts";

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ "max-loras": 1 }); // one adapter at a time: the second evicts the first
});
afterAll(async () => {
  await t?.close();
});

/** Prometheus text format: `name{label="value",...} number` lines, `#` comments. */
function parse(text: string): Map<string, number> {
  const series = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$/.exec(
        line,
      );
    if (!m) throw new Error(`not Prometheus text: ${line}`);
    series.set(`${m[1]}${m[2] ?? ""}`, Number(m[3]));
  }
  return series;
}

test("exact counters after a known sequence, only real adapters as labels, and text that parses", async () => {
  const url = `${t.server.url}/v1/completions`;
  const tokens = (r: { body: unknown }) =>
    (r.body as { usage: { completion_tokens: number } }).usage.completion_tokens;
  await fetch(`${t.server.url}/v1/models`).then((r) => r.text());
  const base = await post(url, { model: "llama", prompt: [1, 2, 3], max_tokens: 4, temperature: 0 });
  const first = await post(url, { model: "demo-all", prompt: [1, 2, 3], max_tokens: 4, temperature: 0 });
  const again = await post(url, { model: "demo-all", prompt: [1, 2, 3], max_tokens: 4, temperature: 0 });
  const other = await post(url, {
    model: "llama",
    lora_model: "demo-attention",
    prompt: [1, 2, 3],
    max_tokens: 4,
    temperature: 0,
  });
  expect((await post(url, { model: "llama", lora_model: "nope", prompt: [1], max_tokens: 2 })).status).toBe(
    404,
  );
  expect((await post(url, { model: "llama", prompt: "x", max_tokens: -1 })).status).toBe(400);

  const text = await (await fetch(`${t.server.url}/metrics`)).text();
  const m = parse(text);
  const get = (s: string) => m.get(s) ?? 0;
  expect(get('multilora_requests_total{route="/v1/models",status="200",adapter=""}')).toBe(1);
  expect(get('multilora_requests_total{route="/v1/completions",status="200",adapter=""}')).toBe(1);
  expect(get('multilora_requests_total{route="/v1/completions",status="200",adapter="demo-all"}')).toBe(2);
  expect(get('multilora_requests_total{route="/v1/completions",status="200",adapter="demo-attention"}')).toBe(
    1,
  );
  expect(get('multilora_requests_total{route="/v1/completions",status="404",adapter=""}')).toBe(1);
  expect(get('multilora_requests_total{route="/v1/completions",status="400",adapter=""}')).toBe(1);
  expect([...m.keys()].some((k) => k.includes('"nope"'))).toBe(false);

  expect(get('multilora_prompt_tokens_total{adapter="demo-all"}')).toBe(6);
  expect(get('multilora_completion_tokens_total{adapter=""}')).toBe(tokens(base));
  expect(get('multilora_completion_tokens_total{adapter="demo-all"}')).toBe(tokens(first) + tokens(again));
  expect(get('multilora_completion_tokens_total{adapter="demo-attention"}')).toBe(tokens(other));
  expect(get("multilora_time_to_first_token_seconds_count")).toBe(4);
  expect(get("multilora_inter_token_latency_seconds_count")).toBe(
    tokens(base) + tokens(first) + tokens(again) + tokens(other) - 4,
  );

  expect(get('multilora_lora_cache_misses_total{adapter="demo-all"}')).toBe(1);
  expect(get('multilora_lora_cache_hits_total{adapter="demo-all"}')).toBe(1);
  expect(get('multilora_lora_cache_misses_total{adapter="demo-attention"}')).toBe(1);
  expect(get('multilora_lora_loads_total{adapter="demo-all"}')).toBe(1);
  expect(get('multilora_lora_load_seconds_count{adapter="demo-attention"}')).toBe(1);
  expect(get('multilora_lora_evictions_total{adapter="demo-all"}')).toBe(1);
  expect(get('multilora_lora_adapter_bytes{adapter="demo-all"}')).toBe(0);
  const stats = t.server.ctx.core.engine.stats();
  expect(get('multilora_lora_adapter_bytes{adapter="demo-attention"}')).toBe(stats.loraBytesUsed);
  expect(get("multilora_lora_cache_bytes_capacity")).toBe(stats.loraBytesCapacity);
  expect(get("multilora_kv_cache_bytes_capacity")).toBe(stats.kvBytesCapacity);
  expect(get("multilora_running_requests")).toBe(0);
  expect(get("multilora_queue_depth")).toBe(0);
});

test("prefix reuse: a repeated prompt's reused tokens and blocks, under our names and vLLM's", async () => {
  const scrape = async () => parse(await (await fetch(`${t.server.url}/metrics`)).text());
  const prompt = Array.from({ length: 70 }, (_, i) => 3 + ((i * 7) % 200));
  const before = await scrape();
  for (let i = 0; i < 2; i++) {
    const r = await post(`${t.server.url}/v1/completions`, { model: "llama", prompt, max_tokens: 2 });
    expect(r.status).toBe(200);
  }
  const after = await scrape();
  const grew = (name: string) => (after.get(name) ?? 0) - (before.get(name) ?? 0);
  // Blocks of 32: the second request reuses the first two (64 of 70 tokens; the last is always computed).
  expect(grew("multilora_prefix_cache_query_tokens_total")).toBe(140);
  expect(grew("multilora_prefix_cache_hit_tokens_total")).toBe(64);
  expect(grew("multilora_prefix_cache_reused_blocks_total")).toBe(2);
  expect(grew("vllm:prefix_cache_queries_total")).toBe(140);
  expect(grew("vllm:prefix_cache_hits_total")).toBe(64);
  const stats = t.server.ctx.core.engine.stats();
  expect(after.get("multilora_prefix_cache_blocks")).toBe(stats.prefixBlocks);
  expect(after.get("multilora_prefix_cache_bytes")).toBe(stats.prefixBytes);
  expect(stats.prefixBlocks).toBeGreaterThanOrEqual(2);
});

test("one JSON log line per request with id, adapter, tokens, times and status", () => {
  const lines: string[] = [];
  const engine = t.server.ctx.core.engine;
  const observer = new Observer(
    createLogger("info", (l) => lines.push(l)),
    engine,
    () => [],
  );
  const record = observer.start("/v1/completions");
  record.adapter = "demo-all";
  record.promptTokens = 3;
  record.engineAt = performance.now();
  observer.token(record);
  observer.token(record);
  observer.end(record, 200);
  observer.end(record, 200); // once only
  expect(lines.length).toBe(1);
  const line = JSON.parse(lines[0] as string);
  expect(line).toMatchObject({
    level: "info",
    msg: "request",
    id: record.id,
    route: "/v1/completions",
    status: 200,
    adapter: "demo-all",
    prompt_tokens: 3,
    completion_tokens: 2,
  });
  for (const f of ["ts", "queue_ms", "ttft_ms", "total_ms"]) expect(line[f]).toBeDefined();
  const quiet: string[] = [];
  const silent = new Observer(
    createLogger("warn", (l) => quiet.push(l)),
    engine,
    () => [],
  );
  silent.end(silent.start("/x"), 200);
  silent.end(silent.start("/y"), 500);
  expect(quiet.map((l) => JSON.parse(l).level)).toEqual(["error"]);
});
