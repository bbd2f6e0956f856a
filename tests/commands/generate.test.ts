/** `multilora demo-model` and `multilora generate` as a user runs them. */
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadChatTemplate } from "../../src/engine/chat-template.ts";
import { loadTokenizer } from "../../src/engine/tokenizer.ts";
import { collect, loraFromFile, openEngine } from "../helpers/engine.ts";

const ROOT = join(import.meta.dir, "../..");
const work = mkdtempSync(join(tmpdir(), "multilora-generate-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function run(args: string[]) {
  const r = spawnSync(process.execPath, [join(ROOT, "src/cli.ts"), ...args], { encoding: "utf8" });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const demo = join(work, "demo");
const made = run(["demo-model", demo, "--seed", "7"]);

describe("multilora demo-model", () => {
  test("writes a checkpoint, tokenizer, chat template and two adapters; the same seed gives the same bytes", () => {
    expect(made.status).toBe(0);
    expect(made.stdout).toContain("adapters demo-attention, demo-all");
    expect(readdirSync(demo).sort()).toEqual([
      "config.json",
      "generation_config.json",
      "lora",
      "model.safetensors",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);
    expect(readdirSync(join(demo, "lora")).sort()).toEqual([
      "demo-all.safetensors",
      "demo-attention.safetensors",
    ]);
    const again = join(work, "again");
    expect(run(["demo-model", again, "--seed", "7"]).status).toBe(0);
    for (const f of [
      "config.json",
      "model.safetensors",
      "tokenizer.json",
      "tokenizer_config.json",
      "lora/demo-all.safetensors",
      "lora/demo-attention.safetensors",
    ]) {
      expect(Buffer.compare(readFileSync(join(demo, f)), readFileSync(join(again, f)))).toBe(0);
    }
    const other = join(work, "other");
    expect(run(["demo-model", other, "--seed", "8"]).status).toBe(0);
    expect(
      Buffer.compare(
        readFileSync(join(demo, "model.safetensors")),
        readFileSync(join(other, "model.safetensors")),
      ),
    ).not.toBe(0);
    expect(
      loadChatTemplate(demo).render([{ role: "user", content: "hi" }], { addGenerationPrompt: true }),
    ).toContain("<|im_start|>assistant");
    expect(run(["demo-model", join(work, "x"), "--preset", "huge"]).stderr).toContain(
      "--preset huge: expected one of tiny, small",
    );
  });
});

describe("multilora generate", () => {
  test("--json gives the engine's greedy tokens, the log-softmax of each, and the decoded text", async () => {
    const r = run([
      "generate",
      "--model",
      demo,
      "--prompt-ids",
      "1,2,3,4",
      "--max-tokens",
      "6",
      "--temperature",
      "0",
      "--json",
      "--ignore-eos",
    ]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as { token_ids: number[]; logprobs: number[]; text: string };
    const engine = openEngine(demo);
    try {
      const expected = await collect(
        engine.enqueue({ prompt: [1, 2, 3, 4], maxNewTokens: 6, temperature: 0 }),
      );
      expect(out.token_ids).toEqual(expected.tokens);
      const logits = engine.forwardLogits([1, 2, 3, 4, ...out.token_ids.slice(0, -1)]);
      out.token_ids.forEach((token, i) => {
        const row = logits[3 + i] as Float32Array;
        const max = Math.max(...row);
        const lse = max + Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
        expect(out.logprobs[i]).toBeCloseTo((row[token] as number) - lse, 4);
      });
      expect(out.text).toBe(loadTokenizer(demo).decode(out.token_ids));
    } finally {
      await engine.close();
    }
  });

  test("--lora runs the adapter: the tokens equal the engine's with that adapter", async () => {
    const adapter = join(demo, "lora/demo-all.safetensors");
    const greedy = ["generate", "--model", demo, "--prompt-ids", "5,6,7", "--max-tokens", "8"];
    greedy.push("--temperature", "0", "--json", "--ignore-eos");
    const r = run([...greedy, "--lora", adapter]);
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as { token_ids: number[] };
    const base = JSON.parse(run(greedy).stdout);
    const engine = openEngine(demo);
    try {
      const expected = await collect(
        engine.enqueue({
          prompt: [5, 6, 7],
          maxNewTokens: 8,
          temperature: 0,
          lora: loraFromFile(adapter, 1n),
        }),
      );
      expect(out.token_ids).toEqual(expected.tokens);
      expect(out.token_ids).not.toEqual(base.token_ids);
    } finally {
      await engine.close();
    }
  });

  test("text prompts stream text; a seed makes sampling repeatable", () => {
    const args = [
      "generate",
      "--model",
      demo,
      "--prompt",
      "The robot and the sea",
      "--max-tokens",
      "12",
      "--seed",
      "42",
    ];
    const a = run(args);
    const b = run(args);
    expect(a.status).toBe(0);
    expect(a.stdout.length).toBeGreaterThan(1);
    expect(a.stdout).toBe(b.stdout);
  });

  test("usage mistakes are named", () => {
    expect(run(["generate", "--prompt", "x"]).stderr).toContain("missing --model <dir>");
    expect(run(["generate", "--model", demo]).stderr).toContain(
      "give exactly one of --prompt <text> and --prompt-ids <ids>",
    );
    expect(run(["generate", "--model", demo, "--prompt-ids", "1,x"]).stderr).toContain(
      "--prompt-ids x: expected a number",
    );
    const missing = run(["generate", "--model", join(work, "nothing"), "--prompt-ids", "1"]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain("no config.json; give a Hugging Face model folder");
  });
});
