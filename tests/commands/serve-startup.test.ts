/** What a newcomer meets at start-up: a busy port, the address bound, a demo model's own adapters, a typo. */
import { afterAll, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as v from "valibot";
import { ServeConfigSchema, startServer } from "../../src/commands/serve.ts";
import { writeDemoModel } from "../../src/engine/demo-model.ts";
import { cpuKernelPath } from "../../src/engine/native.ts";
import { MultiloraError } from "../../src/errors.ts";
import { haveDebianTool } from "../helpers/debian-tool.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-startup-"));
const modelDir = join(work, "demo");
writeDemoModel(modelDir);
afterAll(() => rmSync(work, { recursive: true, force: true }));

const settings = (extra: Record<string, unknown>) =>
  v.parse(ServeConfigSchema, {
    "model-dir": modelDir,
    threads: 2,
    "cache-dir": join(work, "cache"),
    "log-level": "silent",
    ...extra,
  });

test("a busy port is one clear line, and the server listens on loopback unless told otherwise", async () => {
  const taken = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("taken") });
  const port = taken.port;
  let error: unknown;
  try {
    await startServer(settings({ port }), () => {});
  } catch (e) {
    error = e;
  }
  taken.stop(true);
  expect(error).toBeInstanceOf(MultiloraError);
  expect((error as Error).message).toBe(
    `127.0.0.1:${port} is in use (another server?); choose another with --port`,
  );

  const lines: string[] = [];
  const server = await startServer(settings({ port: 0 }), (l) => lines.push(l));
  try {
    expect(server.url).toBe(`http://127.0.0.1:${server.port}`);
    expect(lines.at(-1)).toContain("(bound to 127.0.0.1)");
    // how the (BF16) demo weights are held: mapped or copied, and repacked on the avx512 kernel path
    expect(lines.at(-1)).toMatch(
      /, weights (memory-mapped|copied into the engine's memory \(--model-memory\))/,
    );
    expect(lines.at(-1)?.includes("BF16 matrices repacked")).toBe(cpuKernelPath() === "avx512");
    expect(lines.some((l) => l.startsWith("warning"))).toBe(false);
    // A demo model's own lora/ folder is its LoRA dir when none is given.
    expect(server.ctx.core.registry?.dir).toBe(join(modelDir, "lora"));
    expect(server.ctx.core.registry?.list().map((a) => a.name)).toEqual(["demo-all", "demo-attention"]);
  } finally {
    await server.stop();
  }
});

test("every interface without a key is served with a warning", async () => {
  const lines: string[] = [];
  const server = await startServer(settings({ port: 0, host: "0.0.0.0" }), (l) => lines.push(l));
  await server.stop();
  expect(lines.some((l) => l.startsWith("warning: listening on 0.0.0.0 without --api-key"))).toBe(true);
});

test("a mistyped command gets a did-you-mean", () => {
  const r = spawnSync(process.execPath, [join(import.meta.dir, "../../src/cli.ts"), "srve"], {
    encoding: "utf8",
  });
  expect(r.status).toBe(2);
  expect(r.stderr).toContain('multilora: unknown command "srve"; did you mean "serve"?');
});

test.skipIf(!haveDebianTool("openssl", "version", "the HTTPS test"))(
  "--tls-cert and --tls-key serve HTTPS (a self-signed certificate made here); one without the other is refused",
  async () => {
    const cert = join(work, "cert.pem");
    const key = join(work, "key.pem");
    const made = spawnSync("openssl", [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "1",
      "-subj",
      "/CN=127.0.0.1",
    ]);
    expect(made.status).toBe(0);
    await expect(startServer(settings({ port: 0, "tls-cert": cert }), () => {})).rejects.toThrow(
      "--tls-cert and --tls-key go together",
    );
    const server = await startServer(settings({ port: 0, "tls-cert": cert, "tls-key": key }), () => {});
    try {
      expect(server.url.startsWith("https://127.0.0.1:")).toBe(true);
      const r = await fetch(`${server.url}/health`, { tls: { rejectUnauthorized: false } } as RequestInit);
      expect(await r.json()).toEqual({ status: "ok" });
      await expect(fetch(`http://127.0.0.1:${server.port}/health`)).rejects.toThrow();
    } finally {
      await server.stop();
    }
  },
);
