/**
 * GET /docs in a real headless browser (Debian's chromium) with the network cut off: the API reference
 * renders from our own /openapi.json with our own small script (src/server/docs-page/docs.js): every
 * operation, its request fields with their types, and its error codes. Skips with a notice where chromium
 * is absent outside CI (.ci/run installs it).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { haveDebianTool } from "../helpers/debian-tool.ts";
import { startTestServer, type TestServer } from "../helpers/server.ts";

const haveChromium = haveDebianTool("chromium", "--version", "the /docs page test");

let t: TestServer | undefined;
beforeAll(async () => {
  if (haveChromium) t = await startTestServer();
});
afterAll(async () => {
  await t?.close();
});

test.skipIf(!haveChromium)(
  "the /docs page renders every operation offline, from /openapi.json and our own script",
  async () => {
    const server = t as TestServer;
    const profile = mkdtempSync(join(tmpdir(), "multilora-chromium-"));
    try {
      // Every host but this one resolves to nothing: the page must not need the network.
      const child = Bun.spawn(
        [
          "chromium",
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--disable-dev-shm-usage",
          "--no-first-run",
          "--disable-background-networking",
          "--disable-component-update",
          "--disable-sync",
          `--user-data-dir=${profile}`,
          "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
          "--virtual-time-budget=15000",
          "--dump-dom",
          `${server.server.url}/docs`,
        ],
        { stdout: "pipe", stderr: "ignore" },
      );
      const dom = await new Response(child.stdout).text();
      expect(await child.exited).toBe(0);
      const text = dom
        .replace(/<style[\s\S]*?<\/style>/g, "")
        .replace(/<[^>]+>/g, " ")
        .replace(/\s+/g, " ");
      for (const shown of [
        "multilora",
        "The process is up",
        "Liveness",
        "Readiness: answers 503 while starting or draining",
        "Completions",
        "Models",
        "Adapters",
        // Method and path, a request body's fields with their types and defaults, nested fields.
        "POST /v1/chat/completions",
        "GET /v1/models/{id}",
        "lora_model",
        "load_lora_weights",
        '"auto" | "always" | "never"',
        'default "auto"',
        "messages[]",
        "Content types: application/json , application/msgpack",
        // Error codes with their meanings.
        "409 load_lora_weights is never",
        "413 The body is larger than --max-body-mb",
        "No API key needed",
      ]) {
        expect(text).toContain(shown);
      }
      // Every operation of the document is on the page, by its summary.
      const doc = (await (await fetch(`${server.server.url}/openapi.json`)).json()) as {
        paths: Record<string, Record<string, { summary: string }>>;
      };
      const summaries = Object.values(doc.paths).flatMap((item) =>
        Object.values(item).map((op) => op.summary),
      );
      expect(summaries.length).toBeGreaterThanOrEqual(14);
      for (const summary of summaries) expect(text).toContain(summary);
      // None of a hosted UI's cloud buttons, and no claim that an open server needs a key.
      for (const absent of [
        "Ask AI",
        "Deploy",
        "Generate SDK",
        "Authentication Required",
        "Could not load",
      ]) {
        expect(text).not.toContain(absent);
      }
    } finally {
      rmSync(profile, { recursive: true, force: true });
    }
  },
  60_000,
);
