/**
 * The disk fills up while a PEFT folder is converted into the cache dir: the answer is a 507 that says the
 * server's disk is full (not a 400 blaming the adapter or the client), and the server keeps answering.
 * Needs a small file system to fill: a tmpfs, mounted where the test may (root); skipped elsewhere.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { ALL_SEVEN, writePeftAdapter } from "../helpers/peft.ts";
import { post, startTestServer, type TestServer } from "../helpers/server.ts";

let t: TestServer;
let mounted = false;
let cacheDir = "";
beforeAll(async () => {
  t = await startTestServer();
  cacheDir = join(t.work, "small-disk");
  mkdirSync(cacheDir);
  mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=128k", "tmpfs", cacheDir]).status === 0;
});
afterAll(async () => {
  if (mounted) spawnSync("umount", [cacheDir]);
  await t?.close();
});

test("a full disk during a PEFT conversion is a 507 insufficient_storage, and the server still answers", async () => {
  if (!mounted) {
    console.warn("skipped: cannot mount a small tmpfs here (needs root)");
    return;
  }
  // A server whose cache dir is the small file system (its start-up check writes a few bytes only).
  const small = await startTestServer({ "cache-dir": cacheDir });
  try {
    const dims = { hidden: 64, intermediate: 192, layers: 4, heads: 4, kvHeads: 2, headDim: 16 };
    writePeftAdapter(join(small.loraDir, "big-peft"), { dims, modules: ALL_SEVEN, rank: 32, seed: 4 });
    const r = await post(`${small.server.url}/v1/completions`, {
      model: "big-peft",
      prompt: "hi",
      max_tokens: 2,
    });
    expect(r.status).toBe(507);
    expect(r.body.error.code).toBe("insufficient_storage");
    expect(String(r.body.error.message)).toContain("disk is full");
    const started = performance.now();
    expect((await fetch(`${small.server.url}/health`)).status).toBe(200);
    expect(performance.now() - started).toBeLessThan(1000);
    const plain = await post(`${small.server.url}/v1/completions`, {
      model: "demo-all",
      prompt: "hi",
      max_tokens: 2,
    });
    expect(plain.status).toBe(200);
  } finally {
    await small.close();
  }
});
