/**
 * GET /docs in a real headless browser (Debian's chromium) with the network cut off: the API reference
 * renders from our own /openapi.json and our own copy of its script. Skips with a notice where chromium
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
  "the /docs page renders the operations offline, from /openapi.json and a locally served script",
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
      ]) {
        expect(text).toContain(shown);
      }
    } finally {
      rmSync(profile, { recursive: true, force: true });
    }
  },
  60_000,
);
