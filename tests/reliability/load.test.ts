/**
 * Load: 64 concurrent streaming clients over 8 adapters through an engine cache that holds 3. Zero
 * errors; every response equals the same request run alone (fixed seeds); no engine request left
 * behind; peak resident memory under model + KV budget + LoRA cache + 512 MB.
 *
 * MULTILORA_LONG=1 runs the long variant (256 clients).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { writeDemoModel } from "../../src/engine/demo-model.ts";
import { startTestServer, type TestServer } from "../helpers/server.ts";

const CLIENTS = process.env.MULTILORA_LONG ? 256 : 64;
const KV_MB = 64;
const LORA_CACHE_MB = 16;
let t: TestServer;
const adapters = ["demo-attention", "demo-all"];
beforeAll(async () => {
  t = await startTestServer({
    "max-loras": 3,
    "max-batch": 8,
    "queue-timeout": 60,
    "kv-cache-mb": KV_MB,
    "lora-cache-mb": LORA_CACHE_MB,
  });
  for (const seed of [11, 12, 13]) {
    const spare = join(t.work, `spare-${seed}`);
    writeDemoModel(spare, { seed });
    for (const name of ["demo-attention", "demo-all"]) {
      copyFileSync(
        join(spare, "lora", `${name}.safetensors`),
        join(t.loraDir, `${name}-${seed}.safetensors`),
      );
      adapters.push(`${name}-${seed}`);
    }
  }
});
afterAll(async () => {
  await t?.close();
});

interface Request {
  model: string;
  prompt: number[];
  seed: number;
}

async function streamText(r: Request): Promise<string> {
  const response = await fetch(`${t.server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: r.model,
      prompt: r.prompt,
      seed: r.seed,
      temperature: 0.8,
      max_tokens: 12,
      stream: true,
      return_token_ids: true,
    }),
  });
  if (response.status !== 200) throw new Error(`${r.model}: ${response.status} ${await response.text()}`);
  let out = "";
  const text = await response.text();
  for (const line of text.split("\n\n")) {
    if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
    const chunk = JSON.parse(line.slice(6)) as {
      choices: { token_ids?: number[]; finish_reason: string | null }[];
      error?: unknown;
    };
    if (chunk.error) throw new Error(`${r.model}: stream error ${JSON.stringify(chunk.error)}`);
    for (const c of chunk.choices) out += `${(c.token_ids ?? []).join(",")};${c.finish_reason ?? ""}|`;
  }
  return out;
}

test(`${CLIENTS} concurrent streaming clients over 8 adapters, cache of 3: no errors, same output as alone, nothing left behind`, async () => {
  expect(adapters.length).toBe(8);
  const requests: Request[] = Array.from({ length: CLIENTS }, (_, i) => ({
    model: adapters[i % 8] as string,
    prompt: [1 + (i % 5), 2 + (i % 7), 3],
    seed: 1000 + i,
  }));
  const alone: string[] = [];
  for (const r of requests) alone.push(await streamText(r));

  let peak = process.memoryUsage().rss;
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 5);
  const together = await Promise.all(requests.map((r) => streamText(r)));
  clearInterval(sampler);

  expect(together).toEqual(alone);
  const stats = t.server.ctx.core.engine.stats();
  expect({ running: stats.running, queued: stats.queued, kv: stats.kvBytesUsed }).toEqual({
    running: 0,
    queued: 0,
    kv: 0,
  });
  expect(stats.loraTasks).toBeLessThanOrEqual(3);
  expect(stats.loraEvictions).toBeGreaterThan(0);
  const modelBytes = (t.server.ctx.core.engine as unknown as { checkpoint: { bytes: number } }).checkpoint
    .bytes;
  const bound = modelBytes + (KV_MB + LORA_CACHE_MB + 512) * 1024 * 1024;
  console.log(
    `load: peak RSS ${(peak / 2 ** 20).toFixed(0)} MiB (bound ${(bound / 2 ** 20).toFixed(0)} MiB), ${stats.loraEvictions} evictions`,
  );
  expect(peak).toBeLessThan(bound);
}, 300_000);
