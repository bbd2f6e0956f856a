/**
 * Scale-out compatibility on a real server: vLLM's metric names as the Gateway API Inference Extension's
 * endpoint picker reads them, and vLLM's runtime LoRA routes (/v1/load_lora_adapter, /v1/unload_lora_adapter).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadAuth } from "../../src/server/auth.ts";
import { startTestServer, type TestServer } from "../helpers/server.ts";

let t: TestServer;
let allowed: string;
let outside: string;
let work: string;
beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "multilora-vllm-"));
  allowed = join(work, "allowed");
  outside = join(work, "outside");
  mkdirSync(allowed, { recursive: true });
  mkdirSync(outside, { recursive: true });
  t = await startTestServer({ "allowed-lora-paths": [allowed] });
  const demo = join(t.modelDir, "lora", "demo-all.safetensors");
  copyFileSync(demo, join(allowed, "sql.safetensors"));
  copyFileSync(demo, join(outside, "evil.safetensors"));
  symlinkSync(join(outside, "evil.safetensors"), join(allowed, "link.safetensors"));
  symlinkSync(outside, join(allowed, "linked-dir"));
});
afterAll(async () => {
  await t?.close();
  rmSync(work, { recursive: true, force: true });
});

/** One Prometheus series: its labels and value. */
interface Series {
  labels: Record<string, string>;
  value: number;
}

/** Every series of `name` in an exposition text (what a Prometheus text parser gives). */
function series(text: string, name: string): Series[] {
  const out: Series[] = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^[^{\s]+(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[1] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1] as string] = l[2] as string;
    out.push({ labels, value: Number(m[2]) });
  }
  return out;
}

/** As GIE's parser: the lora_requests_info series with the newest value, its lists split on ",". */
function loraInfo(text: string) {
  const newest = series(text, "vllm:lora_requests_info").reduce((a, b) => (b.value > a.value ? b : a));
  const list = (s: string | undefined) => (s ? s.split(",") : []);
  return {
    running: list(newest.labels.running_lora_adapters),
    waiting: list(newest.labels.waiting_lora_adapters),
    maxLora: Number.parseInt(newest.labels.max_lora ?? "", 10),
    changedAt: newest.value,
  };
}

const metrics = async () => (await fetch(`${t.server.url}/metrics`)).text();
const post = (path: string, body: unknown) =>
  fetch(`${t.server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });

test("vLLM's metric names: requests, KV cache use, and the adapters requests run with", async () => {
  const before = loraInfo(await metrics());
  expect(before.running).toEqual([]);
  expect(before.maxLora).toBeGreaterThanOrEqual(0);
  const controllers = ["demo-attention", "demo-all"].map(() => new AbortController());
  const streams = await Promise.all(
    ["demo-attention", "demo-all"].map(async (adapter, i) => {
      const s = await t.client.completions.create(
        { model: adapter, prompt: "once", max_tokens: 4000, stream: true, temperature: 0 },
        { signal: controllers[i]?.signal },
      );
      const it = s[Symbol.asyncIterator]();
      await it.next(); // running: its first chunk is in
      return it;
    }),
  );
  const text = await metrics();
  const info = loraInfo(text);
  expect(info.running.sort()).toEqual(["demo-all", "demo-attention"]);
  expect(info.waiting).toEqual([]);
  expect(info.changedAt).toBeGreaterThanOrEqual(before.changedAt);
  expect(Math.abs(info.changedAt - Date.now() / 1000)).toBeLessThan(60);
  expect(series(text, "vllm:num_requests_running")[0]?.value).toBe(2);
  expect(series(text, "vllm:num_requests_waiting")[0]?.value).toBe(0);
  const kv = series(text, "vllm:kv_cache_usage_perc")[0]?.value ?? -1;
  expect(kv).toBeGreaterThan(0);
  expect(kv).toBeLessThanOrEqual(1);
  for (const c of controllers) c.abort();
  for (const it of streams) await it.return?.();
  for (let i = 0; i < 100 && loraInfo(await metrics()).running.length > 0; i++) await Bun.sleep(10);
  expect(loraInfo(await metrics()).running).toEqual([]);
});

test("load_lora_adapter: a path in an allowed dir is served under its name; vLLM's codes and bodies", async () => {
  const r = await post("/v1/load_lora_adapter", {
    lora_name: "sql",
    lora_path: join(allowed, "sql.safetensors"),
  });
  expect(r.status).toBe(200);
  expect(r.headers.get("content-type")).toStartWith("text/plain");
  expect(await r.text()).toBe("Success: LoRA adapter 'sql' added successfully.");
  const models = (await (await fetch(`${t.server.url}/v1/models`)).json()) as { data: { id: string }[] };
  expect(models.data.map((m) => m.id)).toContain("sql");
  const done = await t.client.completions.create({ model: "sql", prompt: "x", max_tokens: 2 });
  expect(done.choices[0]?.text).toBeString();

  const again = await post("/v1/load_lora_adapter", {
    lora_name: "sql",
    lora_path: join(allowed, "sql.safetensors"),
  });
  expect(again.status).toBe(400);
  expect(((await again.json()) as { error: { code: string } }).error.code).toBe("lora_already_loaded");
  const dirName = await post("/v1/load_lora_adapter", {
    lora_name: "demo-all",
    lora_path: join(allowed, "sql.safetensors"),
  });
  expect(dirName.status).toBe(400);
  for (const body of [
    { lora_name: "x" },
    { lora_path: join(allowed, "sql.safetensors") },
    { lora_name: "", lora_path: "/" },
  ]) {
    expect((await post("/v1/load_lora_adapter", body)).status).toBe(400);
  }
  // The LoRA dir is always allowed.
  const inDir = await post("/v1/load_lora_adapter", {
    lora_name: "again",
    lora_path: join(t.loraDir, "demo-all.safetensors"),
  });
  expect(inDir.status).toBe(200);
});

test("load_lora_adapter refuses a path outside the allowed dirs, also through a link", async () => {
  for (const lora_path of [
    join(outside, "evil.safetensors"),
    join(allowed, "link.safetensors"),
    join(allowed, "linked-dir", "evil.safetensors"),
    join(allowed, "..", "outside", "evil.safetensors"),
    allowed,
  ]) {
    const r = await post("/v1/load_lora_adapter", { lora_name: "evil", lora_path });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe("lora_path_not_allowed");
  }
  const missing = await post("/v1/load_lora_adapter", {
    lora_name: "evil",
    lora_path: join(allowed, "nope"),
  });
  expect(missing.status).toBe(404);
  const models = (await (await fetch(`${t.server.url}/v1/models`)).json()) as { data: { id: string }[] };
  expect(models.data.map((m) => m.id)).not.toContain("evil");
});

test("unload_lora_adapter: 200 with a text body, then 404; a LoRA dir adapter stays served", async () => {
  await post("/v1/load_lora_adapter", { lora_name: "gone", lora_path: join(allowed, "sql.safetensors") });
  const r = await post("/v1/unload_lora_adapter", { lora_name: "gone" });
  expect(r.status).toBe(200);
  expect(await r.text()).toBe("Success: LoRA adapter 'gone' removed successfully.");
  const models = (await (await fetch(`${t.server.url}/v1/models`)).json()) as { data: { id: string }[] };
  expect(models.data.map((m) => m.id)).not.toContain("gone");
  const twice = await post("/v1/unload_lora_adapter", { lora_name: "gone" });
  expect(twice.status).toBe(404);
  expect(((await twice.json()) as { error: { message: string } }).error.message).toBe(
    "The lora adapter 'gone' cannot be found.",
  );
  expect((await post("/v1/unload_lora_adapter", {})).status).toBe(400);
  expect((await post("/v1/unload_lora_adapter", { lora_name: "demo-attention" })).status).toBe(200);
  const after = (await (await fetch(`${t.server.url}/v1/models`)).json()) as { data: { id: string }[] };
  expect(after.data.map((m) => m.id)).toContain("demo-attention");
});

test("the vLLM LoRA routes are admin routes: the admin key, or loopback only", async () => {
  const { createApp } = await import("../../src/server/app.ts");
  const ctx = t.server.ctx;
  const keyed = createApp({ ...ctx, auth: loadAuth({ apiKeys: [], adminKey: "sk-admin-vllm-1234" }) });
  const open = createApp(ctx);
  for (const path of ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"]) {
    const init = { method: "POST", headers: { "content-type": "application/json" }, body: "{}" };
    expect((await keyed.request(path, init, { remoteAddress: "127.0.0.1" })).status).toBe(401);
    expect((await open.request(path, init, { remoteAddress: "10.0.0.2" })).status).toBe(403);
  }
});
