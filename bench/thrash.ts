/**
 * Cache thrash: 16 rank-64 all-module adapters requested round robin by 8 concurrent clients, through an
 * engine cache that holds 8 adapters, against the same traffic when all 16 fit. SmolLM2-360M-shaped model.
 *
 *   bun bench/thrash.ts [--requests N]
 *
 * Last line: {"bench":"thrash","ratio":R}, R = throughput with 8 slots / throughput with 16.
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import * as v from "valibot";
import { ServeConfigSchema, startServer } from "../src/commands/serve.ts";
import { SMOLLM2_360M, writeRandomAdapter, writeSmolShapedModel } from "./shapes.ts";

const { values } = parseArgs({ options: { requests: { type: "string", default: "64" } } });
const total = Number(values.requests);
const CLIENTS = 8;
const work = mkdtempSync(join(tmpdir(), "multilora-bench-thrash-"));
try {
  const model = join(work, "model");
  writeSmolShapedModel(model);
  const loras = join(work, "loras");
  mkdirSync(loras);
  let bytes = 0;
  for (let i = 0; i < 16; i++)
    bytes = writeRandomAdapter(join(loras, `a${i}.safetensors`), SMOLLM2_360M, 64, 200 + i);

  async function throughput(maxLoras: number): Promise<{ tokensPerSecond: number; evictions: number }> {
    const server = await startServer(
      v.parse(ServeConfigSchema, {
        "model-dir": model,
        "lora-dir": loras,
        host: "127.0.0.1",
        port: 0,
        "cache-dir": join(work, "cache"),
        "max-loras": maxLoras,
        "max-batch": CLIENTS,
        "max-lora-rank": 64,
        "lora-cache-mb": 4096,
        "queue-timeout": 600,
      }),
      () => {},
    );
    const request = async (i: number) => {
      const r = await fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: `a${i % 16}`,
          prompt: [1, 2, 3, 4, 5, 6, 7, 8],
          max_tokens: 8,
          temperature: 0,
        }),
      });
      const body = (await r.json()) as { usage?: { completion_tokens: number } };
      if (r.status !== 200) throw new Error(`a${i % 16}: ${r.status} ${JSON.stringify(body)}`);
      return body.usage?.completion_tokens ?? 0;
    };
    const run = async () => {
      let next = 0;
      let tokens = 0;
      const t = performance.now();
      await Promise.all(
        Array.from({ length: CLIENTS }, async () => {
          while (next < total) {
            const n = await request(next++); // (not `tokens += await`: that reads tokens before the await)
            tokens += n;
          }
        }),
      );
      return tokens / ((performance.now() - t) / 1000);
    };
    await run(); // warm: every adapter read into the registry once
    const before = server.ctx.core.engine.stats().loraEvictions;
    const tokensPerSecond = await run();
    const evictions = server.ctx.core.engine.stats().loraEvictions - before;
    await server.stop();
    return { tokensPerSecond, evictions };
  }

  const fits = await throughput(16);
  const thrash = await throughput(8);
  console.log(
    `16 rank-64 adapters on all seven modules (${(bytes / 1e6).toFixed(0)} MB each, bf16), ${CLIENTS} clients, ${total} requests of 8 tokens, round robin`,
  );
  console.log("| cache | tokens/s | evictions |");
  console.log("|---|---|---|");
  console.log(`| holds all 16 | ${fits.tokensPerSecond.toFixed(1)} | ${fits.evictions} |`);
  console.log(`| holds 8 | ${thrash.tokensPerSecond.toFixed(1)} | ${thrash.evictions} |`);
  console.log(
    JSON.stringify({
      bench: "thrash",
      ratio: Number((thrash.tokensPerSecond / fits.tokensPerSecond).toFixed(3)),
    }),
  );
} finally {
  rmSync(work, { recursive: true, force: true });
}
