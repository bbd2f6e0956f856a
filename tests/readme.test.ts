/**
 * The README's first example works as written (its request body, sent to a real server over the demo
 * model), and `npm ci` can install without engine warnings: every locked package accepts the Node.js
 * version package.json promises.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { post, startTestServer, type TestServer } from "./helpers/server.ts";

const ROOT = join(import.meta.dir, "..");
let t: TestServer;
beforeAll(async () => {
  t = await startTestServer();
});
afterAll(async () => {
  await t?.close();
});

test("the README's curl: its route and body answer 200 with at most the tokens it asks for", async () => {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const curl = /curl localhost:3000(\S+) .*?\\\n\s+-d '([^']+)'/s.exec(readme);
  expect(curl).not.toBeNull();
  const [, path, body] = curl as RegExpExecArray;
  const parsed = JSON.parse(body as string);
  const r = await post(`${t.server.url}${path}`, parsed);
  expect(r.status).toBe(200);
  const usage = r.body.usage as { completion_tokens: number };
  expect(usage.completion_tokens).toBeGreaterThan(0);
  expect(usage.completion_tokens).toBeLessThanOrEqual(parsed.max_tokens);
  expect(r.body.model).toBe(parsed.model);
});

test("every locked package accepts the oldest Node.js package.json says is enough (npm ci warns about none)", () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8"));
  const oldest = /^>=\s*(\d+(?:\.\d+){0,2})$/.exec(pkg.engines.node)?.[1];
  expect(oldest).toBeDefined();
  const version = [...(oldest as string).split("."), "0", "0"].slice(0, 3).join(".");
  const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8"));
  const refusing = Object.entries(lock.packages as Record<string, { engines?: { node?: string } }>)
    .filter(([, p]) => p.engines?.node && !Bun.semver.satisfies(version, p.engines.node))
    .map(([name, p]) => `${name} wants node ${p.engines?.node}`);
  expect(refusing).toEqual([]);
});
