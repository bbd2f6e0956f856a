/**
 * Server overhead, on the tiny demo model:
 *   - for max_tokens 16 at concurrency 1 and 16, the share of end-to-end latency spent outside the engine
 *     (HTTP end to end, from a client in another process, minus the same requests run on the engine
 *     directly; the two alternate, and the share is the median over the pairs);
 *   - GET /v1/models requests/s against a bare Bun.serve returning the same bytes, both driven by wrk
 *     (Debian's), which must reach 20,000 requests/s on the bare server so it is not the bottleneck; three
 *     bare-then-ours pairs, the median pair's ratio;
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
import { createInterface } from "node:readline";
import { Readable } from "node:stream";
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
  // End-to-end time of a request, from a client in another process (bench/http-client.ts).
  const client = Bun.spawn([process.execPath, join(import.meta.dir, "http-client.ts"), server.url], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "inherit",
  });
  const replies = createInterface({ input: Readable.fromWeb(client.stdout as never) })[
    Symbol.asyncIterator
  ]();
  const httpBatch = async (concurrency: number) => {
    client.stdin.write(`${concurrency}\n`);
    client.stdin.flush();
    const line = await replies.next();
    if (line.done) throw new Error("the HTTP client ended early");
    return Number(line.value);
  };
  // Engine-only and end-to-end runs alternate, so the machine's drift (this VM's thread wake-ups vary
  // several-fold from minute to minute) touches both alike; the share is the median over the pairs.
  const measure = async (concurrency: number, rounds: number) => {
    const pairs: { http: number; engine: number }[] = [];
    for (let round = 0; round < rounds; round++) {
      const engine = median(await Promise.all(Array.from({ length: concurrency }, engineRun)));
      const http = await httpBatch(concurrency);
      pairs.push({ http, engine });
    }
    return {
      concurrency,
      http: median(pairs.map((p) => p.http)),
      engine: median(pairs.map((p) => p.engine)),
      share: Math.max(0, median(pairs.map((p) => (p.http - p.engine) / p.http))),
    };
  };
  await measure(4, 5);
  const rows = [await measure(1, 60), await measure(16, 15)];
  client.stdin.end();
  await client.exited;

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
  // Three bare-then-ours pairs: the ratio is the median pair's (a single pair moved by up to 0.1 here).
  const rates: { bare: number; ours: number }[] = [];
  for (let pair = 0; pair < 3; pair++) {
    const bareRate = await wrk(`http://127.0.0.1:${bare.port}/v1/models`);
    rates.push({ bare: bareRate, ours: await wrk(`${server.url}/v1/models`) });
  }
  rates.sort((a, b) => a.ours / a.bare - b.ours / b.bare);
  const { bare: bareRate, ours: ourRate } = rates[1] as { bare: number; ours: number };
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
    `| GET /v1/models, wrk -t2 -c64 (median of 3 pairs) | ${ourRate.toFixed(0)} requests/s vs ${bareRate.toFixed(0)} on a bare Bun.serve |`,
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
