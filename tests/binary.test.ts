/**
 * The single-file release: `npm run build:binary` makes dist/multilora, which is copied alone into an empty
 * folder (no checkout, no node_modules, no bun on PATH) and serves the embedded demo model there; a request
 * with an adapter must give exactly what the source tree's `multilora generate` gives.
 */
import { afterAll, expect, test } from "bun:test";
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";

const ROOT = join(import.meta.dir, "..");
const work = mkdtempSync(join(tmpdir(), "multilora-binary-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Resolves with the server's URL once it logs its "serving" line (on stderr, with the other logs). */
function started(child: ReturnType<typeof spawn>): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = "";
    const read = (chunk: Buffer) => {
      out += chunk.toString();
      const url = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(out)?.[1];
      if (url) resolve(url);
    };
    child.stdout?.on("data", read);
    child.stderr?.on("data", read);
    child.on("exit", (code) => reject(new Error(`the binary exited with ${code} before serving:\n${out}`)));
  });
}

test("the compiled binary alone serves the demo model and an adapter, token for token as the source does", async () => {
  const build = spawnSync("npm", ["run", "-s", "build:binary"], { cwd: ROOT, encoding: "utf8" });
  expect(build.status, build.stderr).toBe(0);
  const binary = join(work, "multilora");
  copyFileSync(join(ROOT, "dist/multilora"), binary);

  const child = spawn(binary, ["serve", "--port", "0", "--host", "127.0.0.1"], {
    cwd: work,
    env: { PATH: "/usr/bin:/bin", HOME: work, XDG_CACHE_HOME: join(work, "cache") },
  });
  try {
    const url = await started(child);
    const modelDir = join(work, "cache/multilora/multilora-demo");
    expect(existsSync(join(modelDir, "lora/demo-all.safetensors"))).toBe(true);

    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused" });
    const body = {
      model: "multilora-demo",
      prompt: [5, 6, 7, 8],
      max_tokens: 8,
      temperature: 0,
      lora_model: "demo-all",
      return_token_ids: true,
      logprobs: 0,
    };
    type Completion = {
      choices: { token_ids: number[]; finish_reason: string; logprobs: { token_logprobs: number[] } }[];
      usage: { completion_tokens: number };
    };
    const r = (await client.completions.create(body as never)) as unknown as Completion;
    const logprobs = r.choices[0]?.logprobs.token_logprobs ?? [];
    const args = ["generate", "--model", modelDir, "--prompt-ids", "5,6,7,8", "--max-tokens", "8"];
    args.push("--temperature", "0", "--json", "--lora", join(modelDir, "lora/demo-all.safetensors"));
    const source = spawnSync(process.execPath, [join(ROOT, "src/cli.ts"), ...args], { encoding: "utf8" });
    const expected = JSON.parse(source.stdout) as { token_ids: number[]; logprobs: number[] };
    expect(r.choices[0]?.token_ids).toEqual(expected.token_ids);
    expect(logprobs).toHaveLength(8);
    logprobs.forEach((lp, i) => {
      expect(lp).toBeCloseTo(expected.logprobs[i] as number, 5);
    });
    expect(r.choices[0]?.finish_reason).toBe("length");
    expect(r.usage.completion_tokens).toBe(8);

    // The adapter changes the output (the request did not silently run on the base model).
    const base = (await client.completions.create({
      ...body,
      lora_model: undefined,
    } as never)) as unknown as Completion;
    const baseLogprobs = base.choices[0]?.logprobs.token_logprobs ?? [];
    expect(Math.max(...baseLogprobs.map((lp, i) => Math.abs(lp - (logprobs[i] as number))))).toBeGreaterThan(
      1e-3,
    );

    // The API page and its script are embedded too.
    const page = await fetch(`${url}/docs`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<script src="/docs/docs.js"></script>');
    const script = await fetch(`${url}/docs/docs.js`);
    expect(script.status).toBe(200);
    expect(script.headers.get("content-type")).toContain("javascript");
    expect(await script.text()).toContain('fetch("/openapi.json")');
  } finally {
    child.kill("SIGTERM");
  }
}, 60_000);
