/**
 * Server overhead, on the tiny demo model:
 *   - for max_tokens 16 at concurrency 1 and 16, the share of end-to-end latency spent outside the engine
 *     (HTTP end to end minus the same requests run on the engine directly, per request);
 *   - GET /v1/models requests/s against a bare Bun.serve returning the same bytes, both driven by wrk
 *     (Debian's), which must reach 20,000 requests/s on the bare server so it is not the bottleneck;
 *   - streaming: milliseconds between tokens seen by an HTTP client.
 *
 *   bun bench/http.ts
 *
 * Last line: {"bench":"http","overhead_share":S,"models_ratio":R,"stream_ms_per_token":T}
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as v from "valibot";
import { ServeConfigSchema, startServer } from "../src/commands/serve.ts";
import { median } from "./shapes.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-bench-http-"));
const PROMPT = [1, 2, 3, 4, 5, 6, 7, 8];

/** wrk's requests/s; run without blocking: the servers it measures live in this process. */
async function wrk(url: string): Promise<number> {
  if (spawnSync("wrk", ["-v"]).error) throw new Error("wrk is not installed (apt-get install wrk)");
  const child = Bun.spawn(["wrk", "-t2", "-c64", "-d3s", url], { stdout: "pipe", stderr: "pipe" });
  const out = await new Response(child.stdout).text();
  await child.exited;
  const m = /Requests\/sec:\s+([\d.]+)/.exec(out);
  return Number(m?.[1] ?? 0);
}

try {
  const server = await startServer(
    v.parse(ServeConfigSchema, {
      host: "127.0.0.1",
      port: 0,
      "cache-dir": join(work, "cache"),
      "max-batch": 16,
    }),
    () => {},
  );
  const ctx = server.ctx;

  // Engine-only time of a request: the engine's own events, without HTTP or the generation core.
  const engineRun = async () => {
    const t = performance.now();
    const handle = ctx.core.engine.enqueue({ prompt: PROMPT, maxNewTokens: 16, temperature: 0 });
    for await (const _ of handle.events) {
    }
    return performance.now() - t;
  };
  const httpRun = async () => {
    const t = performance.now();
    const r = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "llama", prompt: PROMPT, max_tokens: 16, temperature: 0 }),
    });
    const body = (await r.json()) as { usage: { completion_tokens: number } };
    if (body.usage.completion_tokens !== 16)
      throw new Error("the demo model stopped early; the comparison needs 16 tokens");
    return performance.now() - t;
  };
  const measure = async (concurrency: number, run: () => Promise<number>) => {
    const all: number[] = [];
    for (let round = 0; round < 10; round++)
      all.push(...(await Promise.all(Array.from({ length: concurrency }, run))));
    return median(all);
  };
  await measure(4, httpRun);
  const rows: { concurrency: number; http: number; engine: number; share: number }[] = [];
  for (const concurrency of [1, 16]) {
    const engine = await measure(concurrency, engineRun);
    const http = await measure(concurrency, httpRun);
    rows.push({ concurrency, http, engine, share: Math.max(0, (http - engine) / http) });
  }

  // Streaming: gaps between tokens as a client sees them.
  const gaps: number[] = [];
  for (let round = 0; round < 5; round++) {
    const r = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "llama", prompt: PROMPT, max_tokens: 64, temperature: 0, stream: true }),
    });
    const reader = r.body?.getReader() as ReadableStreamDefaultReader<Uint8Array>;
    let last = 0;
    for (let c = await reader.read(); !c.done; c = await reader.read()) {
      const now = performance.now();
      if (last > 0) gaps.push(now - last);
      last = now;
    }
  }

  // /v1/models against a bare server returning the same bytes.
  const modelsBytes = await (await fetch(`${server.url}/v1/models`)).arrayBuffer();
  const bare = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: () => new Response(modelsBytes, { headers: { "content-type": "application/json" } }),
  });
  const bareRate = await wrk(`http://127.0.0.1:${bare.port}/v1/models`);
  const ourRate = await wrk(`${server.url}/v1/models`);
  bare.stop(true);
  await server.stop();

  console.log("| figure | value |");
  console.log("|---|---|");
  for (const r of rows) {
    console.log(
      `| concurrency ${r.concurrency}: end to end / engine only (median per request) | ${r.http.toFixed(2)} ms / ${r.engine.toFixed(2)} ms: ${(100 * r.share).toFixed(1)}% outside the engine |`,
    );
  }
  console.log(`| streaming, ms between chunks (median) | ${median(gaps).toFixed(3)} |`);
  console.log(
    `| GET /v1/models, wrk -t2 -c64 | ${ourRate.toFixed(0)} requests/s vs ${bareRate.toFixed(0)} on a bare Bun.serve |`,
  );
  if (bareRate < 20000)
    console.log(
      `note: wrk reached only ${bareRate.toFixed(0)} requests/s on the bare server (target 20,000): the load generator may be the limit`,
    );
  const overhead = Math.max(...rows.map((r) => r.share));
  console.log(
    JSON.stringify({
      bench: "http",
      overhead_share: Number(overhead.toFixed(3)),
      models_ratio: Number((ourRate / bareRate).toFixed(3)),
      stream_ms_per_token: Number(median(gaps).toFixed(3)),
    }),
  );
} finally {
  rmSync(work, { recursive: true, force: true });
}
