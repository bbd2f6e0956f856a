/**
 * Cold adapter load: first-request latency minus warm latency for a rank-16 all-module adapter on a
 * SmolLM2-360M-shaped model (what loading the adapter costs a request: read, hash, validate, copy into
 * the engine's cache), against reading and memcpying the same bytes, measured in the same run.
 *
 *   bun bench/cold-load.ts [--adapters N]
 *
 * Last line: {"bench":"cold-load","ms":M,"memcpy_ms":C,"ratio":C/M}
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import * as v from "valibot";
import { ServeConfigSchema, startServer } from "../src/commands/serve.ts";
import { readFileBytes } from "../src/formats/safetensors-reader.ts";
import { median, SMOLLM2_360M, writeRandomAdapter, writeSmolShapedModel } from "./shapes.ts";

const { values } = parseArgs({ options: { adapters: { type: "string", default: "5" } } });
const count = Number(values.adapters);
const work = mkdtempSync(join(tmpdir(), "multilora-bench-cold-"));
try {
  const model = join(work, "model");
  writeSmolShapedModel(model);
  const loras = join(work, "loras");
  mkdirSync(loras);
  let bytes = 0;
  for (let i = 0; i < count; i++)
    bytes = writeRandomAdapter(join(loras, `a${i}.safetensors`), SMOLLM2_360M, 16, 100 + i);
  const server = await startServer(
    v.parse(ServeConfigSchema, {
      "model-dir": model,
      "lora-dir": loras,
      host: "127.0.0.1",
      port: 0,
      "cache-dir": join(work, "cache"),
      "lora-cache-mb": 2048,
    }),
    () => {},
  );
  const request = async (model: string) => {
    const t = performance.now();
    const r = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, prompt: [1, 2, 3, 4], max_tokens: 1, temperature: 0 }),
    });
    await r.text();
    if (r.status !== 200) throw new Error(`${model}: ${r.status}`);
    return performance.now() - t;
  };
  await request(server.ctx.core.servedNames[0] as string); // warm the base path
  const cold: number[] = [];
  const warm: number[] = [];
  const copy: number[] = [];
  for (let i = 0; i < count; i++) {
    const name = `a${i}`;
    cold.push(await request(name));
    warm.push(Math.min(await request(name), await request(name)));
    const t = performance.now();
    const read = readFileBytes(join(loras, `${name}.safetensors`));
    new Uint8Array(read.length).set(read);
    copy.push(performance.now() - t);
  }
  await server.stop();
  const extra = cold.map((c, i) => c - (warm[i] as number));
  const ms = median(extra);
  const memcpyMs = median(copy);
  console.log(
    `rank-16 adapter on all seven modules of a SmolLM2-360M-shaped model: ${(bytes / 1e6).toFixed(1)} MB of bf16, ${count} adapters`,
  );
  console.log("| figure | median ms | runs (ms) |");
  console.log("|---|---|---|");
  console.log(
    `| first request (cold) | ${median(cold).toFixed(1)} | ${cold.map((x) => x.toFixed(0)).join(" ")} |`,
  );
  console.log(
    `| same request, adapter cached (warm) | ${median(warm).toFixed(1)} | ${warm.map((x) => x.toFixed(0)).join(" ")} |`,
  );
  console.log(
    `| cold - warm: what loading costs | ${ms.toFixed(1)} | ${extra.map((x) => x.toFixed(0)).join(" ")} |`,
  );
  console.log(
    `| read + memcpy of the file | ${memcpyMs.toFixed(1)} | ${copy.map((x) => x.toFixed(0)).join(" ")} |`,
  );
  console.log(
    JSON.stringify({
      bench: "cold-load",
      ms: Number(ms.toFixed(1)),
      memcpy_ms: Number(memcpyMs.toFixed(1)),
      ratio: Number((memcpyMs / ms).toFixed(3)),
    }),
  );
} finally {
  rmSync(work, { recursive: true, force: true });
}
