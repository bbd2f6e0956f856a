/**
 * Signals reach the server however it was started: `npm start` (npm forwards SIGTERM and SIGINT to the
 * server itself: the script execs it) and `npx multilora serve`, where npm's `sh -c` dies on the signal
 * without passing it on: the server sees it is orphaned and shuts down as on SIGTERM.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeDemoModel } from "../../src/engine/demo-model.ts";

const ROOT = join(import.meta.dir, "../..");
const work = mkdtempSync(join(tmpdir(), "multilora-signals-"));
const model = writeDemoModel(join(work, "model")).dir;
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Starts `command`, waits for the server's start line and returns its URL. */
async function start(command: string[], env: Record<string, string> = {}) {
  const child = Bun.spawn(command, {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const reader = child.stderr.getReader();
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the server did not start: ${text}`);
    text += new TextDecoder().decode(value);
    const m = / on (http:\/\/[\d.]+:\d+) /.exec(text);
    if (m) return { child, url: m[1] as string };
  }
}

/** Whether anything answers at `url` within a short wait. */
async function answers(url: string): Promise<boolean> {
  try {
    await fetch(`${url}/health`, { signal: AbortSignal.timeout(500) });
    return true;
  } catch {
    return false;
  }
}

async function gone(url: string): Promise<boolean> {
  for (let i = 0; i < 40; i++) {
    if (!(await answers(url))) return true;
    await Bun.sleep(100);
  }
  return false;
}

const serveArgs = ["serve", model, "--port", "0", "--threads", "2", "--cache-dir", join(work, "cache")];

test("npm start: SIGINT and SIGTERM to npm stop the server", async () => {
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    const { child, url } = await start(["npm", "start", "--silent", "--", ...serveArgs.slice(1)]);
    expect(await answers(url)).toBe(true);
    child.kill(signal);
    expect(await gone(url)).toBe(true);
  }
}, 30_000);

test("under npm's sh -c (npx): the server follows its parent when the shell dies", async () => {
  const command = `${process.execPath} src/cli.ts ${serveArgs.join(" ")}`;
  const { child, url } = await start(["sh", "-c", command], { npm_command: "exec" });
  expect(await answers(url)).toBe(true);
  child.kill("SIGTERM"); // the shell dies; the server is orphaned
  expect(await gone(url)).toBe(true);
}, 30_000);
