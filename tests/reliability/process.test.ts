/**
 * Faults of the process as an operator meets them, on the real CLI in a child process: the model file
 * truncated while serving (what copying a new checkpoint over the old one does) must not kill the server
 * with SIGBUS; SIGTERM drains and exits 0; an unusable cache dir is one clear line at start-up.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, truncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeDemoModel } from "../../src/engine/demo-model.ts";

const ROOT = join(import.meta.dir, "../..");
const BUN = join(ROOT, "node_modules/.bin/bun");
let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "multilora-process-"));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

interface Child {
  proc: ReturnType<typeof Bun.spawn>;
  url: string;
  stderr: () => string;
}

/** `multilora serve` on the demo model written into `name`, on a free loopback port. */
async function serve(name: string, extra: string[] = []): Promise<Child> {
  const modelDir = writeDemoModel(join(work, name), { seed: 3 }).dir;
  const proc = Bun.spawn(
    [
      BUN,
      join(ROOT, "src/cli.ts"),
      "serve",
      modelDir,
      join(modelDir, "lora"),
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--threads",
      "2",
      "--cache-dir",
      join(work, `${name}-cache`),
      ...extra,
    ],
    { stdout: "pipe", stderr: "pipe" },
  );
  let text = "";
  const reader = (proc.stderr as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  const url = await new Promise<string>((resolve, reject) => {
    const pump = async () => {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return reject(new Error(`exited before serving:\n${text}`));
        text += decoder.decode(value);
        const m = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(text);
        if (m) {
          resolve(m[1] as string);
          break;
        }
      }
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        text += decoder.decode(value);
      }
    };
    pump();
  });
  return { proc, url, stderr: () => text };
}

const complete = (url: string, extra: Record<string, unknown> = {}) =>
  fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "demo-all", prompt: "hi", max_tokens: 8, temperature: 0, ...extra }),
  });

test("truncating the model file while serving does not crash the server", async () => {
  const child = await serve("truncate");
  try {
    const before = (await (await complete(child.url)).json()) as { choices: { text: string }[] };
    truncateSync(join(work, "truncate", "model.safetensors"), 0);
    for (let i = 0; i < 3; i++) {
      const r = await complete(child.url);
      expect(r.status).toBe(200);
      expect(((await r.json()) as { choices: { text: string }[] }).choices[0]?.text).toBe(
        before.choices[0]?.text as string,
      );
    }
    const started = performance.now();
    expect((await fetch(`${child.url}/health`)).status).toBe(200);
    expect(performance.now() - started).toBeLessThan(1000);
    expect(child.proc.exitCode).toBeNull();
  } finally {
    child.proc.kill("SIGKILL");
    await child.proc.exited;
  }
}, 30_000);

test("a read-only model file is read in place (--model-memory auto); --model-memory copy has the engine copy it", async () => {
  const { mapsWeights } = await import("../../src/engine/checkpoint.ts");
  const dir = writeDemoModel(join(work, "readonly")).dir;
  const file = join(dir, "model.safetensors");
  expect(mapsWeights(file, "auto")).toBe(false);
  chmodSync(file, 0o444);
  expect(mapsWeights(file, "auto")).toBe(true);
  expect(mapsWeights(file, "copy")).toBe(false);
  expect(mapsWeights(file, "map")).toBe(true);
});

test("SIGTERM: a running stream ends with an error event, and the process exits 0", async () => {
  const child = await serve("sigterm", ["--max-seq-len", "4096", "--drain-timeout", "0.5"]);
  const stream = await complete(child.url, { max_tokens: 4000, stream: true });
  expect(stream.status).toBe(200);
  child.proc.kill("SIGTERM");
  const text = await stream.text();
  expect(text).toContain('"code":"shutting_down"');
  expect(text).not.toContain("[DONE]");
  expect(await child.proc.exited).toBe(0);
  expect(child.stderr()).toContain("SIGTERM");
  expect(child.stderr()).toContain('"status":503');
}, 30_000);

test("an unusable cache dir is one clear line at start-up", async () => {
  const file = join(work, "not-a-dir");
  await Bun.write(file, "x");
  const modelDir = writeDemoModel(join(work, "cachecheck")).dir;
  const proc = Bun.spawn(
    [BUN, join(ROOT, "src/cli.ts"), "serve", modelDir, "--port", "0", "--cache-dir", join(file, "sub")],
    { stdout: "pipe", stderr: "pipe" },
  );
  const code = await proc.exited;
  const stderr = await new Response(proc.stderr as ReadableStream).text();
  expect(code).not.toBe(0);
  expect(stderr).toContain(`cache dir ${join(file, "sub")} is not usable`);
  expect(stderr).not.toContain("    at "); // no stack trace
  expect(stderr.trim().split("\n").length).toBe(1);
  mkdirSync(join(work, "unused"), { recursive: true });
});
