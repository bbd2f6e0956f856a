/**
 * Hostile and careless adapter files in the LoRA dir (issue 12): FIFOs, links to /dev/zero and outside
 * the dir inside PEFT folders, huge and sparse files, broken headers, adapters for another base model,
 * in-place rewrites that keep size and mtime, half-copied files. Each is refused with a 400 naming the
 * problem (the validate route agrees), nothing is served stale, and /health answers within 1 s throughout.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import {
  closeSync,
  copyFileSync,
  openSync,
  readFileSync,
  statSync,
  symlinkSync,
  truncateSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { readSafetensors } from "../../src/formats/safetensors-reader.ts";
import { writeSafetensors } from "../../src/formats/safetensors-writer.ts";
import { writePeftAdapter } from "../helpers/peft.ts";
import { post, startTestServer, type TestServer } from "../helpers/server.ts";

const DEMO_DIMS = { hidden: 64, intermediate: 192, layers: 4, heads: 4, kvHeads: 2, headDim: 16 };

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ "max-adapter-mb": 64 });
});
afterAll(async () => {
  await t?.close();
});

const lora = (...parts: string[]) => join(t.loraDir, ...parts);

const complete = (model: string, extra: Record<string, unknown> = {}) =>
  post(`${t.server.url}/v1/completions`, { model, prompt: [1, 2], max_tokens: 3, temperature: 0, ...extra });

const validate = (name: string) => post(`${t.server.url}/v1/lora/adapters/${name}/validate`, {});

/** How long /health takes to answer, in ms (the server runs in this process: a blocked loop blocks it too). */
async function healthMs(): Promise<number> {
  const started = performance.now();
  const r = await fetch(`${t.server.url}/health`, { signal: AbortSignal.timeout(5000) });
  expect(r.status).toBe(200);
  return performance.now() - started;
}

/** Sends `attack` and, while it runs, checks /health answers within 1 s; returns the attack's answer. */
async function whileHealthy<T>(attack: () => Promise<T>): Promise<T> {
  const pending = attack();
  expect(await healthMs()).toBeLessThan(1000);
  const result = await pending;
  expect(await healthMs()).toBeLessThan(1000);
  return result;
}

async function refused(name: string, message: RegExp): Promise<void> {
  const r = await whileHealthy(() => complete(name));
  expect(r.status).toBe(400);
  expect(r.body.error).toMatchObject({ param: "lora_model" });
  expect(String(r.body.error.message)).toMatch(message);
  const v = await whileHealthy(() => validate(name));
  expect(v.status).toBe(200);
  expect(v.body).toMatchObject({ valid: false });
  expect((v.body.problems as string[]).join("\n")).toMatch(message);
}

function mkfifo(path: string): void {
  expect(spawnSync("mkfifo", [path]).status).toBe(0);
}

/** A PEFT folder for the demo model (or for other widths), named `name` in the LoRA dir. */
function peft(name: string, dims = DEMO_DIMS, config: Record<string, unknown> = {}) {
  return writePeftAdapter(lora(name), {
    dims,
    config: { base_model_name_or_path: "multilora/demo", ...config },
  });
}

test("a FIFO as an adapter file, as PEFT weights or config, or linked to: refused at once, /health keeps answering", async () => {
  mkfifo(lora("fifo.safetensors"));
  await refused("fifo", /not a regular file \(a FIFO\)/);

  peft("fifo-weights");
  const weights = lora("fifo-weights", "adapter_model.safetensors");
  (await import("node:fs")).unlinkSync(weights);
  mkfifo(weights);
  await refused("fifo-weights", /adapter_model\.safetensors: is not a regular file \(a FIFO\)/);

  peft("fifo-config");
  const config = lora("fifo-config", "adapter_config.json");
  (await import("node:fs")).unlinkSync(config);
  mkfifo(config);
  await refused("fifo-config", /adapter_config\.json: is not a regular file \(a FIFO\)/);

  mkfifo(lora(".a-fifo"));
  symlinkSync(lora(".a-fifo"), lora("fifo-link.safetensors"));
  await refused("fifo-link", /not a regular file \(a FIFO\)/);
  expect((await complete("demo-all")).status).toBe(200);
});

test("links inside PEFT folders that lead outside the LoRA dir (to /dev/zero too) are refused, never read", async () => {
  const outside = join(t.work, "outside");
  writePeftAdapter(outside, { dims: DEMO_DIMS });
  peft("escape-weights");
  (await import("node:fs")).unlinkSync(lora("escape-weights", "adapter_model.safetensors"));
  symlinkSync(
    join(outside, "adapter_model.safetensors"),
    lora("escape-weights", "adapter_model.safetensors"),
  );
  await refused("escape-weights", /adapter_model\.safetensors: is a link that leads outside the LoRA dir/);

  peft("escape-config");
  (await import("node:fs")).unlinkSync(lora("escape-config", "adapter_config.json"));
  symlinkSync(join(outside, "adapter_config.json"), lora("escape-config", "adapter_config.json"));
  await refused("escape-config", /adapter_config\.json: is a link that leads outside the LoRA dir/);

  // A relative link through a folder link inside the dir that itself leads out.
  peft("escape-relative");
  symlinkSync(outside, lora("escape-relative", "up"));
  (await import("node:fs")).unlinkSync(lora("escape-relative", "adapter_model.safetensors"));
  symlinkSync("up/adapter_model.safetensors", lora("escape-relative", "adapter_model.safetensors"));
  await refused("escape-relative", /leads outside the LoRA dir/);

  peft("zero-weights");
  (await import("node:fs")).unlinkSync(lora("zero-weights", "adapter_model.safetensors"));
  symlinkSync("/dev/zero", lora("zero-weights", "adapter_model.safetensors"));
  const r = await whileHealthy(() => complete("zero-weights"));
  expect(r.status).toBe(400);
  expect(String(r.body.error.message)).not.toMatch(/is a directory/);

  peft("zero-config");
  (await import("node:fs")).unlinkSync(lora("zero-config", "adapter_config.json"));
  symlinkSync("/dev/zero", lora("zero-config", "adapter_config.json"));
  await refused("zero-config", /adapter_config\.json: is a link that leads outside the LoRA dir/);
});

test("an adapter_config.json over 1 MB is refused by its size, before it is read", async () => {
  peft("huge-config");
  const path = lora("huge-config", "adapter_config.json");
  const text = readFileSync(path, "utf8");
  writeFileSync(path, `${text.trimEnd().slice(0, -1)}, "padding": "${"x".repeat(2 << 20)}"}`);
  await refused("huge-config", /adapter_config\.json: is \d+ bytes; config files are at most 1048576/);
});

/** The demo adapter's bytes with `edit` applied to the header text (same length or not). */
function demoWithHeader(edit: (header: string) => string): Buffer {
  const bytes = readFileSync(lora("demo-attention.safetensors"));
  const n = Number(bytes.readBigUInt64LE(0));
  const header = edit(bytes.subarray(8, 8 + n).toString("latin1"));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([length, Buffer.from(header, "latin1"), bytes.subarray(8 + n)]);
}

test.each([
  ["empty", () => writeFileSync(lora("empty.safetensors"), ""), /too short/],
  [
    "short",
    () => {
      copyFileSync(lora("demo-attention.safetensors"), lora("short.safetensors"));
      truncateSync(lora("short.safetensors"), 3000);
    },
    /truncated/,
  ],
  [
    "bad-json",
    () =>
      writeFileSync(
        lora("bad-json.safetensors"),
        demoWithHeader((h) => h.replace('"weights"', '"weights')),
      ),
    /not valid JSON/,
  ],
  [
    "huge-header",
    () => {
      const b = readFileSync(lora("demo-attention.safetensors"));
      b.writeBigUInt64LE(1n << 40n, 0);
      writeFileSync(lora("huge-header.safetensors"), b);
    },
    /header length \d+ is outside/,
  ],
  [
    "bogus-dtype",
    () =>
      writeFileSync(
        lora("bogus-dtype.safetensors"),
        demoWithHeader((h) => h.replace('"BF16"', '"QQ16"')),
      ),
    /unsupported dtype/,
  ],
  [
    "overlap",
    () =>
      writeFileSync(
        lora("overlap.safetensors"),
        demoWithHeader((h) => {
          const m = /"config":\{[^}]*"data_offsets":\[(\d+),(\d+)\]/.exec(h) as RegExpExecArray;
          const size = Number(m[2]) - Number(m[1]);
          return h.replace(`[${m[1]},${m[2]}]`, `[0,${size}]`);
        }),
      ),
    /overlaps|gap|bytes after/,
  ],
  [
    "sparse",
    () => {
      // A header that declares 4 GB of weights, and a sparse file that long: refused by the cap, never read.
      const rows = 1 << 14;
      const rowLength = 1 << 17;
      const header = JSON.stringify({
        weights: { dtype: "BF16", shape: [rows, rowLength], data_offsets: [0, rows * rowLength * 2] },
        config: {
          dtype: "I32",
          shape: [rows, 3],
          data_offsets: [rows * rowLength * 2, rows * rowLength * 2 + rows * 12],
        },
      });
      const length = Buffer.alloc(8);
      length.writeBigUInt64LE(BigInt(header.length));
      const path = lora("sparse.safetensors");
      writeFileSync(path, Buffer.concat([length, Buffer.from(header)]));
      truncateSync(path, 8 + header.length + rows * rowLength * 2 + rows * 12);
    },
    /larger than --max-adapter-mb 64/,
  ],
])("%s: load, the validate route and the listing agree it is invalid", async (name, make, message) => {
  make();
  const rss = process.memoryUsage().rss;
  await refused(name, message);
  expect(process.memoryUsage().rss - rss).toBeLessThan(256 << 20);
  const models = (await fetch(`${t.server.url}/v1/models`).then((r) => r.json())) as { data: unknown };
  expect((models.data as { id: string }[]).map((m) => m.id)).not.toContain(name);
  expect((await complete("demo-all")).status).toBe(200);
});

test("a half-copied adapter is not listed until it is whole", async () => {
  const bytes = readFileSync(lora("demo-all.safetensors"));
  const path = lora("copying.safetensors");
  writeFileSync(path, bytes.subarray(0, bytes.length >> 1));
  const ids = async () =>
    ((await fetch(`${t.server.url}/v1/models`).then((r) => r.json())) as { data: { id: string }[] }).data.map(
      (m) => m.id,
    );
  expect(await ids()).not.toContain("copying");
  expect(await ids()).toContain("demo-all");
  writeFileSync(path, bytes);
  expect(await ids()).toContain("copying");
  expect((await complete("copying")).status).toBe(200);
});

test("a PEFT folder trained for another base model is refused before converting, naming the widths", async () => {
  peft("other-base", { ...DEMO_DIMS, hidden: 96, headDim: 24 });
  await refused("other-base", /lora_A is \[4, 96\] but the model's input width is 64/);
});

test("a TensorRT-LLM file for other widths is refused: non-zero padding, or widths in its metadata", async () => {
  const demo = readSafetensors(lora("demo-attention.safetensors"));
  const w = demo.info("weights");
  const [rows, rowLength] = w.shape as [number, number];
  const config = (demo.view("config") as Int32Array).slice();
  // Rank 8 of q (64 -> 64) and v (64 -> 32) on rows long enough for other widths, filled to the end.
  const wide = rowLength * 2;
  const data = new Uint16Array(rows * wide).fill(0x3c00);
  writeSafetensors(lora("other-widths.safetensors"), [
    { name: "weights", dtype: "BF16", shape: [rows, wide], data: new Uint8Array(data.buffer) },
    { name: "config", dtype: "I32", shape: [rows, 3], data: new Uint8Array(config.buffer) },
  ]);
  await refused("other-widths", /non-zero values beyond rank \d+ x \(64 \+ \d+\)/);

  writeSafetensors(
    lora("metadata-widths.safetensors"),
    [
      { name: "weights", dtype: "BF16", shape: [rows, rowLength], data: demo.rawBytes("weights") },
      { name: "config", dtype: "I32", shape: [rows, 3], data: new Uint8Array(config.buffer) },
    ],
    { module_widths: JSON.stringify({ attn_q: [960, 960], attn_v: [960, 320] }) },
  );
  await refused(
    "metadata-widths",
    /attn_q.*was extracted for widths 960 -> 960 but the model's are 64 -> 64/,
  );
});

test("an in-place rewrite that keeps size and mtime is noticed; unload drops the version and loaded_at", async () => {
  const path = lora("sneaky.safetensors");
  copyFileSync(lora("demo-attention.safetensors"), path);
  utimesSync(path, 1_700_000_000, 1_700_000_000); // whole seconds, so the same time can be put back
  const body = { logprobs: 0 };
  const lp = (r: Awaited<ReturnType<typeof complete>>) =>
    (r.body as unknown as { choices: { logprobs: { token_logprobs: number[] } }[] }).choices[0]?.logprobs
      .token_logprobs[0];
  const first = await complete("sneaky", body);
  expect(first.status).toBe(200);
  const before = statSync(path);
  // Other weights, same length, same inode, and the old mtime put back.
  const other = readFileSync(lora("demo-attention.safetensors"));
  const file = readSafetensors(path);
  const w = file.info("weights");
  const bits = new Uint16Array(other.buffer, other.byteOffset + w.begin, (w.end - w.begin) / 2);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i] as number;
    if ((b & 0x7f80) !== 0 && (b & 0x7f80) < 0x7f00) bits[i] = b + 0x80;
  }
  const fd = openSync(path, "r+");
  writeSync(fd, other, 0, other.length, 0);
  closeSync(fd);
  utimesSync(path, 1_700_000_000, 1_700_000_000);
  expect(statSync(path).mtimeMs).toBe(before.mtimeMs);
  const second = await complete("sneaky", body);
  expect(second.status).toBe(200);
  expect(lp(second)).not.toBe(lp(first) as number);

  const describe = async () =>
    (await fetch(`${t.server.url}/v1/lora/adapters/sneaky`).then((r) => r.json())) as Record<string, unknown>;
  expect((await describe()).loaded_at).toBeNumber();
  const unload = await post(`${t.server.url}/v1/lora/adapters/sneaky/unload`, {});
  expect(unload.status).toBe(200);
  const after = await describe();
  expect(after.loaded_at).toBeUndefined();
  expect(after.state).toBe("on_disk");
  // After unload the next load reads the file again.
  writeFileSync(path, readFileSync(lora("demo-attention.safetensors")));
  utimesSync(path, 1_700_000_000, 1_700_000_000);
  const third = await complete("sneaky", body);
  expect(lp(third)).toBe(lp(first) as number);
});
