/**
 * `multilora check` on the CPU engine: every behaviour passes on the demo model, and a LoRA dir whose
 * adapter has all-zero weights (B = 0, so the adapter changes nothing) makes "an adapter changes the
 * output" fail, which shows the checks can fail.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runChecks } from "../../src/commands/check.ts";
import { writeDemoModel } from "../../src/engine/demo-model.ts";

const ROOT = join(import.meta.dir, "../..");
const work = mkdtempSync(join(tmpdir(), "multilora-check-test-"));
const model = join(work, "model");
writeDemoModel(model, { seed: 3 });
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** A copy of a TensorRT-LLM-format adapter with its `weights` tensor (A and B) zeroed. */
function zeroWeights(from: string, to: string): void {
  const bytes = new Uint8Array(readFileSync(from));
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength))) as Record<
    string,
    { data_offsets: [number, number] }
  >;
  const [start, end] = (header.weights as { data_offsets: [number, number] }).data_offsets;
  bytes.fill(0, 8 + headerLength + start, 8 + headerLength + end);
  writeFileSync(to, bytes);
}

const args = (loraDir: string) => [model, loraDir, "--threads", "2", "--cache-dir", join(work, "cache")];

describe("multilora check", () => {
  test("every behaviour passes on the demo model and its two adapters", async () => {
    const results = await runChecks(args(join(model, "lora")));
    expect(results.map((r) => r.name)).toContain("an adapter changes the output");
    expect(results.length).toBe(15);
    expect(results.filter((r) => r.status !== "PASS")).toEqual([]);
  });

  test("blocks larger than the check's prompt make the prefix check fail; with reuse off it is skipped", async () => {
    const name = "a repeated prompt reuses its KV prefix and answers the same";
    const big = await runChecks([...args(join(model, "lora")), "--kv-block-tokens", "4096"]);
    expect(big.find((r) => r.name === name)).toMatchObject({ status: "FAIL" });
    expect(big.find((r) => r.name === name)?.value).toStartWith("0 of ");
    const off = await runChecks([...args(join(model, "lora")), "--kv-cache-reuse", "off"]);
    expect(off.find((r) => r.name === name)).toEqual({ name, status: "SKIP", value: "--kv-cache-reuse off" });
  });

  test("an adapter with all-zero B makes 'an adapter changes the output' fail", async () => {
    const loras = join(work, "zero-b");
    mkdirSync(loras);
    zeroWeights(join(model, "lora/demo-all.safetensors"), join(loras, "demo-all.safetensors"));
    copyFileSync(join(model, "lora/demo-attention.safetensors"), join(loras, "demo-attention.safetensors"));
    const results = await runChecks(args(loras));
    const changes = results.find((r) => r.name === "an adapter changes the output");
    expect(changes?.status).toBe("FAIL");
    expect(changes?.value).toContain("demo-all: same as the base");
    expect(results.filter((r) => r.status === "FAIL").map((r) => r.name)).toEqual([
      "an adapter changes the output",
    ]);
  });

  test("the command prints one line per behaviour and exits with the number of failures; --json", () => {
    const r = spawnSync(
      process.execPath,
      [join(ROOT, "src/cli.ts"), "check", ...args(join(model, "lora")), "--json"],
      {
        encoding: "utf8",
      },
    );
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as { results: { status: string }[]; failed: number };
    expect(out.failed).toBe(0);
    expect(out.results).toHaveLength(15);
  });
});
