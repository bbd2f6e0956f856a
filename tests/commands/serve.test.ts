/** `multilora serve`'s settings and start-up, and the pin cap through the admin route. */
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { serveConfig } from "../../src/commands/serve.ts";
import { writeDemoModel } from "../../src/engine/demo-model.ts";
import { post, startTestServer } from "../helpers/server.ts";

const ROOT = join(import.meta.dir, "../..");

describe("settings", () => {
  test("flags override --config, which overrides the defaults; positionals name the model and LoRA dirs", () => {
    const dir = mkdtempSync(join(tmpdir(), "multilora-serve-"));
    const file = join(dir, "serve.json");
    writeFileSync(file, JSON.stringify({ port: 9000, "max-batch": 4, "lora-cache-mb": 64, pin: ["a"] }));
    const { config } = serveConfig([
      "m",
      "l",
      "--config",
      file,
      "--max-batch",
      "12",
      "--preload",
      "x,y",
      "--served-model-name",
      "one",
      "--served-model-name",
      "two",
    ]);
    expect(config).toMatchObject({
      "model-dir": "m",
      "lora-dir": "l",
      port: 9000,
      "max-batch": 12,
      "lora-cache-mb": 64,
      pin: ["a"],
      preload: ["x", "y"],
      "served-model-name": ["one", "two"],
      host: "127.0.0.1",
      "queue-timeout": 60,
      backend: "auto",
    });
  });

  test("--print-config prints the merged settings; a bad value is named", () => {
    const r = spawnSync(
      process.execPath,
      [join(ROOT, "src/cli.ts"), "serve", "--print-config", "--threads", "3"],
      { encoding: "utf8", env: { ...process.env, PORT: "4321" } },
    );
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ threads: 3, port: 4321, "model-dir": null });
    const bad = spawnSync(process.execPath, [join(ROOT, "src/cli.ts"), "serve", "--max-batch", "0"], {
      encoding: "utf8",
    });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain("max-batch");
    const missing = spawnSync(
      process.execPath,
      [join(ROOT, "src/cli.ts"), "serve", join(tmpdir(), "no-such-model"), "--port", "0"],
      { encoding: "utf8" },
    );
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain("does not exist");
  });
});

test("pinning past the cap (capacity minus one max-size adapter) is a 409", async () => {
  // max-lora-rank 8 on the tiny demo model: a max-size bf16 adapter is 77,824 bytes; 0.1 MiB leaves 27,033
  // bytes to pin: one 14,336-byte demo-attention, not two.
  const t = await startTestServer({ "max-lora-rank": 8, "lora-cache-mb": 0.1 });
  try {
    const first = await post(`${t.server.url}/v1/lora/adapters/demo-attention/load`, { pin: true });
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ state: "pinned" });
    const spare = join(t.work, "spare");
    writeDemoModel(spare, { seed: 42 });
    copyFileSync(join(spare, "lora", "demo-attention.safetensors"), join(t.loraDir, "other.safetensors"));
    const second = await post(`${t.server.url}/v1/lora/adapters/other/load`, { pin: true });
    expect(second.status).toBe(409);
    expect(second.body.error).toMatchObject({ code: "pin_limit" });
    expect(String(second.body.error.message)).toContain("may be pinned");
  } finally {
    await t.close();
  }
});

test("an adapter larger than the whole cache is refused at once (400), not left waiting for room", async () => {
  // demo-all in the engine is bigger than a 0.02 MiB (20,971-byte) cache; demo-attention (14,336) fits.
  const t = await startTestServer({ "lora-cache-mb": 0.02, "queue-timeout": 30 });
  try {
    const started = Date.now();
    const r = await post(`${t.server.url}/v1/completions`, {
      model: "demo-all",
      prompt: [1, 2],
      max_tokens: 2,
    });
    expect(Date.now() - started).toBeLessThan(5000);
    expect(r.status).toBe(400);
    expect(r.body.error).toMatchObject({ code: "lora_invalid" });
    expect(String(r.body.error.message)).toContain("more than the whole adapter cache holds (20971 bytes)");
    const small = await post(`${t.server.url}/v1/completions`, {
      model: "demo-attention",
      prompt: [1, 2],
      max_tokens: 2,
    });
    expect(small.status).toBe(200);
  } finally {
    await t.close();
  }
});

test("--adapter-memory-mb: adapters whose host copy was dropped are read again when the engine evicted them, and answer the same", async () => {
  // A 47,185-byte engine cache holds demo-all (38,912 bytes) or demo-attention (14,336), not both; a
  // 1 KiB host cap keeps only the newest copy. Alternating forces an eviction and a re-read each time.
  const t = await startTestServer({ "lora-cache-mb": 0.045, "adapter-memory-mb": 1 / 1024 });
  try {
    const run = async (model: string) => {
      const r = await post(`${t.server.url}/v1/completions`, {
        model,
        prompt: [3, 4, 5],
        max_tokens: 6,
        temperature: 0,
        logprobs: 0,
        return_token_ids: true,
      });
      expect(r.status).toBe(200);
      const choice = (r.body.choices as { token_ids: number[]; logprobs: { token_logprobs: number[] } }[])[0];
      return { ids: choice?.token_ids, logprobs: choice?.logprobs.token_logprobs };
    };
    const all = await run("demo-all");
    const attention = await run("demo-attention");
    expect(attention.logprobs).not.toEqual(all.logprobs);
    for (let round = 0; round < 2; round++) {
      expect(await run("demo-all")).toEqual(all);
      expect(await run("demo-attention")).toEqual(attention);
    }
    const registry = t.server.ctx.core.registry;
    expect(registry?.rereads).toBe(4);
    expect(t.server.ctx.core.engine.stats().loraEvictions).toBeGreaterThanOrEqual(5);
  } finally {
    await t.close();
  }
});

test("--converted-cache-mb caps the PEFT conversions kept in the cache dir (least recently used removed)", async () => {
  const { writePeftAdapter, ALL_SEVEN } = await import("../helpers/peft.ts");
  const dims = { hidden: 64, intermediate: 192, layers: 4, heads: 4, kvHeads: 2, headDim: 16 };
  // Each converted rank-4 all-module adapter is tens of KiB: a 0.05 MiB cap keeps one.
  const t = await startTestServer({ "converted-cache-mb": 0.05 });
  try {
    for (const [name, seed] of [
      ["first", 1],
      ["second", 2],
    ] as const) {
      writePeftAdapter(join(t.loraDir, name), { dims, modules: ALL_SEVEN, rank: 4, alpha: 8, seed });
      const r = await post(`${t.server.url}/v1/completions`, { model: name, prompt: [1, 2], max_tokens: 2 });
      expect(r.status).toBe(200);
    }
    const converted = readdirSync(join(t.work, "cache", "peft")).filter((f) => f.endsWith(".safetensors"));
    expect(converted).toHaveLength(1);
    expect(join(t.work, "cache", "peft", converted[0] as string)).toBe(
      t.server.ctx.core.registry?.loaded("second")?.path ?? "second was not loaded",
    );
  } finally {
    await t.close();
  }
});

test("admission limits: --request-timeout cuts a generation, --max-queue answers 503, --max-body-mb 413", async () => {
  const t = await startTestServer({
    "request-timeout": 0.3,
    "max-queue": 1,
    "max-body-mb": 0.001,
    "max-seq-len": 4000,
  });
  try {
    const url = `${t.server.url}/v1/completions`;
    const started = Date.now();
    const cut = await post(url, { model: "demo-all", prompt: [1], max_tokens: 3900, temperature: 0 });
    const choice = cut.body as unknown as {
      choices: { finish_reason: string }[];
      usage: { completion_tokens: number };
    };
    expect(cut.status).toBe(200);
    expect(choice.choices[0]?.finish_reason).toBe("length");
    expect(choice.usage.completion_tokens).toBeLessThan(3900);
    expect(Date.now() - started).toBeLessThan(3000);

    const controller = new AbortController();
    const busy = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      // demo-all from [1] runs long without an end token (the base model may stop early).
      body: JSON.stringify({
        model: "demo-all",
        prompt: [1],
        max_tokens: 3900,
        temperature: 0,
        stream: true,
      }),
      signal: controller.signal,
    });
    await busy.body?.getReader().read();
    const refused = await post(url, { model: "llama", prompt: [1], max_tokens: 2 });
    expect(refused.status).toBe(503);
    expect(refused.body.error).toMatchObject({ code: "overloaded", type: "overloaded_error" });
    controller.abort();

    await new Promise((r) => setTimeout(r, 400)); // the aborted stream's slot is released
    const big = await post(url, { model: "llama", prompt: "x".repeat(2000), max_tokens: 2 });
    expect(big.status).toBe(413);
    expect(big.body.error).toMatchObject({ code: "request_too_large" });
  } finally {
    await t.close();
  }
});

test("SIGTERM under load: running requests finish, new ones are refused, the process exits 0", async () => {
  const cache = mkdtempSync(join(tmpdir(), "multilora-sigterm-"));
  const port = 20000 + Math.floor(Math.random() * 20000);
  const child = Bun.spawn(
    [
      process.execPath,
      join(ROOT, "src/cli.ts"),
      "serve",
      "--port",
      String(port),
      "--host",
      "127.0.0.1",
      "--cache-dir",
      cache,
      "--threads",
      "2",
    ],
    {
      stderr: "pipe",
      stdout: "pipe",
    },
  );
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 200; i++) {
    const up = await fetch(`${base}/v1/health/ready`).then(
      (r) => r.ok,
      () => false,
    );
    if (up) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  // Under load: eight requests running when the signal comes.
  const running = Array.from({ length: 8 }, (_, i) =>
    post(`${base}/v1/completions`, {
      model: i % 2 ? "demo-all" : "demo-attention",
      prompt: [1, i],
      max_tokens: 600,
      temperature: 0,
    }),
  );
  await new Promise((r) => setTimeout(r, 100));
  child.kill("SIGTERM");
  await new Promise((r) => setTimeout(r, 20));
  const late = await post(`${base}/v1/completions`, { model: "demo-all", prompt: [1], max_tokens: 2 }).then(
    (r) => String(r.status),
    () => "refused",
  );
  expect(["503", "refused"]).toContain(late);
  for (const finished of await Promise.all(running)) {
    expect(finished.status).toBe(200);
    expect(
      (finished.body as unknown as { usage: { completion_tokens: number } }).usage.completion_tokens,
    ).toBeGreaterThan(0);
  }
  expect(await child.exited).toBe(0);
  const after = await fetch(`${base}/health`).then(
    () => "answered",
    () => "refused",
  );
  expect(after).toBe("refused");
  expect(await new Response(child.stderr).text()).toContain(
    "SIGTERM: finishing running requests, then exiting",
  );
}, 30_000);

test("--preload and --pin load adapters at start-up", async () => {
  const t = await startTestServer({ preload: ["demo-all"], pin: ["demo-attention"] });
  try {
    const list = (await (await fetch(`${t.server.url}/v1/lora/adapters`)).json()) as {
      data: { name: string; state: string }[];
    };
    expect(list.data.map((a) => [a.name, a.state])).toEqual([
      ["demo-all", "cached"],
      ["demo-attention", "pinned"],
    ]);
  } finally {
    await t.close();
  }
});

test("--print-config never prints keys", () => {
  const r = spawnSync(
    process.execPath,
    [
      join(ROOT, "src/cli.ts"),
      "serve",
      "--print-config",
      "--api-key",
      "sk-secret-123456",
      "--admin-key",
      "sk-admin-123456",
    ],
    {
      encoding: "utf8",
    },
  );
  expect(r.status).toBe(0);
  expect(r.stdout).not.toContain("secret");
  expect(r.stdout).not.toContain("sk-admin");
  expect(JSON.parse(r.stdout)).toMatchObject({ "api-key": ["<redacted>"], "admin-key": "<redacted>" });
});
