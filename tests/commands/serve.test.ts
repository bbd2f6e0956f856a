/** `multilora serve`'s settings and start-up, and the pin cap through the admin route. */
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, writeFileSync } from "node:fs";
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
      host: "0.0.0.0",
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
