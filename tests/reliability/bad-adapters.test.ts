/**
 * Broken adapter files in the LoRA dir: each is a 400 naming its problem, the other adapters keep
 * working, and the process never crashes. A file rewritten in place while loaded serves its new version.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { castFloats, type DType } from "../../src/formats/dtypes.ts";
import { readSafetensors } from "../../src/formats/safetensors-reader.ts";
import { writeSafetensors } from "../../src/formats/safetensors-writer.ts";
import { post, startTestServer, type TestServer } from "../helpers/server.ts";

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ "max-lora-rank": 16 });
});
afterAll(async () => {
  await t?.close();
});

/** The demo adapter's tensors, to be broken one way or another. */
function demo() {
  const file = readSafetensors(join(t.loraDir, "demo-attention.safetensors"));
  const w = file.info("weights");
  return {
    weights: file.rawBytes("weights").slice(),
    config: (file.view("config") as Int32Array).slice(),
    rows: w.shape[0] as number,
    rowLength: w.shape[1] as number,
  };
}

function write(
  name: string,
  weights: Uint8Array,
  config: Int32Array,
  rows: number,
  rowLength: number,
  dtype: DType = "BF16",
) {
  writeSafetensors(join(t.loraDir, `${name}.safetensors`), [
    { name: "weights", dtype, shape: [rows, rowLength], data: weights },
    { name: "config", dtype: "I32", shape: [config.length / 3, 3], data: config },
  ]);
}

const complete = (model: string) =>
  post(`${t.server.url}/v1/completions`, { model, prompt: [1, 2], max_tokens: 3, temperature: 0 });

test.each([
  [
    "truncated",
    () => {
      writeFileSync(
        join(t.loraDir, "truncated.safetensors"),
        readFileSync(join(t.loraDir, "demo-attention.safetensors")),
      );
      truncateSync(join(t.loraDir, "truncated.safetensors"), 5000);
    },
    /the file is truncated|runs past the end of the file/,
  ],
  [
    "lying-header",
    () => {
      const bytes = readFileSync(join(t.loraDir, "demo-attention.safetensors"));
      const text = bytes
        .toString("latin1")
        .replace(/"data_offsets":\[0,(\d+)\]/, (_m, end) => `"data_offsets":[0,${Number(end) + 2}]`);
      writeFileSync(join(t.loraDir, "lying-header.safetensors"), Buffer.from(text, "latin1"));
    },
    /data_offsets|bytes|overlaps|gap/,
  ],
  [
    "wrong-shapes",
    () => {
      const d = demo();
      write(
        "wrong-shapes",
        d.weights.subarray(0, ((d.rows * d.rowLength) / 2) * 2),
        d.config,
        d.rows,
        d.rowLength / 2,
      );
    },
    /needs \d+ values per row but rows hold \d+/,
  ],
  [
    "wrong-dtype",
    () => {
      const d = demo();
      const f32 = new Uint8Array(d.rows * d.rowLength * 4);
      const bits = new Uint16Array(d.weights.buffer, d.weights.byteOffset, d.rows * d.rowLength);
      castFloats({ dtype: "BF16", data: bits }, 0, bits.length, 1, "F32", f32);
      write("wrong-dtype", f32, d.config, d.rows, d.rowLength, "F32");
    },
    /the weights are float32 but this engine needs bfloat16/,
  ],
  [
    "rank-over-limit",
    () => {
      const d = demo();
      d.config[2] = 40; // rank 40 > --max-lora-rank 16
      const rowLength = 40 * (64 + 64);
      const weights = new Uint8Array(d.rows * rowLength * 2);
      write("rank-over-limit", weights, d.config, d.rows, rowLength);
    },
    /rank 40 exceeds max_lora_rank 16/,
  ],
  [
    "unknown-module",
    () => {
      const d = demo();
      d.config[0] = 16; // moe_router: not in a Llama model
      d.config[3] = 42; // no such module id
      write("unknown-module", d.weights, d.config, d.rows, d.rowLength);
    },
    /unknown module id 42/,
  ],
  [
    "nan-weights",
    () => {
      const d = demo();
      new Uint16Array(d.weights.buffer, d.weights.byteOffset, 4).set([0x7fc0, 0x7f80, 0xffc0, 0x7fc1]);
      write("nan-weights", d.weights, d.config, d.rows, d.rowLength);
    },
    /4 NaN or Inf values/,
  ],
])("%s: a 400 naming the problem; the other adapters keep working", async (name, make, message) => {
  make();
  const r = await complete(name);
  expect(r.status).toBe(400);
  expect(String(r.body.error.message)).toMatch(message);
  expect(r.body.error).toMatchObject({ param: "lora_model" });
  const fine = await complete("demo-all");
  expect(fine.status).toBe(200);
});

test("an adapter rewritten in place while loaded: the new version is served, never a mix", async () => {
  const d = demo();
  write("mutable", d.weights, d.config, d.rows, d.rowLength);
  const first = await post(`${t.server.url}/v1/completions`, {
    model: "mutable",
    prompt: [1, 2],
    max_tokens: 3,
    temperature: 0,
    logprobs: 0,
  });
  expect(first.status).toBe(200);
  // Same size, same inode, other bytes: every weight doubled (bf16 exponent + 1 where it is safe).
  const bits = new Uint16Array(d.weights.buffer, d.weights.byteOffset, d.rows * d.rowLength);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i] as number;
    if ((b & 0x7f80) !== 0 && (b & 0x7f80) < 0x7f00) bits[i] = b + 0x80;
  }
  const path = join(t.loraDir, "mutable.safetensors");
  const before = readFileSync(path);
  const header = before.subarray(0, before.length - d.weights.length - d.config.byteLength);
  writeFileSync(path, Buffer.concat([header, Buffer.from(d.weights), Buffer.from(d.config.buffer)]));
  const second = await post(`${t.server.url}/v1/completions`, {
    model: "mutable",
    prompt: [1, 2],
    max_tokens: 3,
    temperature: 0,
    logprobs: 0,
  });
  expect(second.status).toBe(200);
  const lp = (r: typeof first) =>
    (r.body as unknown as { choices: { logprobs: { token_logprobs: number[] } }[] }).choices[0]?.logprobs
      .token_logprobs[0];
  expect(lp(second)).not.toBe(lp(first) as number);
  // The health of the process after all of it.
  expect((await fetch(`${t.server.url}/v1/health/ready`)).status).toBe(200);
});

test("hot replace under load: running requests finish on the old weights, new ones get the new, never mixed", async () => {
  const src = join(t.loraDir, "demo-attention.safetensors");
  const other = join(t.loraDir, "demo-all.safetensors");
  writeFileSync(join(t.loraDir, "swap.safetensors"), readFileSync(src));
  const body = { model: "swap", prompt: [1, 2, 3], max_tokens: 300, temperature: 0, return_token_ids: true };
  const ids = (r: { body: unknown }) =>
    (r.body as { choices: { token_ids: number[] }[] }).choices[0]?.token_ids;
  const oldAlone = ids(await post(`${t.server.url}/v1/completions`, body));
  // The same request, and the file replaced (by rename, with other modules and weights) while it runs.
  const running = fetch(`${t.server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }),
  });
  const response = await running;
  const reader = response.body?.getReader() as ReadableStreamDefaultReader<Uint8Array>;
  let streamed = new TextDecoder().decode((await reader.read()).value);
  writeFileSync(join(t.loraDir, ".swap.tmp"), readFileSync(other));
  (await import("node:fs")).renameSync(join(t.loraDir, ".swap.tmp"), join(t.loraDir, "swap.safetensors"));
  const fresh = ids(await post(`${t.server.url}/v1/completions`, body));
  const newAlone = ids(await post(`${t.server.url}/v1/completions`, { ...body, model: "demo-all" }));
  for (let r = await reader.read(); !r.done; r = await reader.read())
    streamed += new TextDecoder().decode(r.value);
  const streamedIds = streamed
    .split("\n\n")
    .filter((l) => l.startsWith("data: {"))
    .flatMap(
      (l) => (JSON.parse(l.slice(6)) as { choices: { token_ids: number[] }[] }).choices[0]?.token_ids ?? [],
    );
  expect(streamedIds).toEqual(oldAlone as number[]);
  expect(fresh).toEqual(newAlone as number[]);
  expect(fresh).not.toEqual(oldAlone as number[]);
});
