/**
 * scripts/build-engine.sh and docker/run.sh: shellcheck-clean, their usage, their refusals, and the exact
 * commands the build runs (--dry-run), since TensorRT-LLM itself is not installed here.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeDemoModel } from "../../src/engine/demo-model.ts";
import { haveDebianTool } from "../helpers/debian-tool.ts";
import { writePeftAdapter } from "../helpers/peft.ts";

const ROOT = join(import.meta.dir, "../..");
const SCRIPT = join(ROOT, "scripts/build-engine.sh");
const RUN = join(ROOT, "docker/run.sh");
const work = mkdtempSync(join(tmpdir(), "multilora-build-engine-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const haveShellcheck = haveDebianTool("shellcheck", "--version", "the shellcheck test");

function bash(script: string, args: string[]) {
  return spawnSync("bash", [script, ...args], { encoding: "utf8" });
}

describe("scripts/build-engine.sh", () => {
  test.skipIf(!haveShellcheck)("both scripts pass shellcheck", () => {
    const r = spawnSync("shellcheck", ["--severity=style", SCRIPT, RUN], { encoding: "utf8" });
    expect(r.stdout + r.stderr).toBe("");
    expect(r.status).toBe(0);
  });

  test("--help prints the usage and exits 0", () => {
    const r = bash(SCRIPT, ["--help"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("Usage: scripts/build-engine.sh --model <hf-dir> --output <engine-dir>");
    expect(r.stdout).toContain("--lora-target-modules");
  });

  test("wrong input is refused before anything runs, with the reason", () => {
    const demo = join(work, "refuse-model");
    writeDemoModel(demo);
    const cases: [string[], string][] = [
      [["--output", join(work, "e")], "missing --model <hf-dir>"],
      [["--model", demo], "missing --output <engine-dir>"],
      [["--model", work, "--output", join(work, "e")], "config.json does not exist"],
      [
        ["--model", demo, "--output", join(work, "e"), "--dtype", "float8"],
        "--dtype float8: expected bfloat16 or float16",
      ],
      [["--model", demo, "--output", join(work, "e"), "--tp-size", "0"], "0: expected a positive integer"],
      [["--model", demo, "--output", join(work, "e"), "--lora", work], "adapter_config.json does not exist"],
      [["--model", demo, "--bogus"], "unknown option --bogus"],
    ];
    for (const [args, message] of cases) {
      const r = bash(SCRIPT, args);
      expect({ args, status: r.status }).toEqual({ args, status: 2 });
      expect(r.stderr).toContain(message);
    }
  });

  test("--dry-run: convert_checkpoint.py, trtllm-build with the LoRA plugin, tokenizer files, one extract per adapter", () => {
    const model = join(work, "model");
    writeDemoModel(model);
    const sql = join(work, "peft/sql");
    const chat = join(work, "peft/chat");
    writePeftAdapter(sql);
    writePeftAdapter(chat);
    const engine = join(work, "engine");
    const r = bash(SCRIPT, [
      "--model",
      model,
      "--output",
      engine,
      "--tp-size",
      "2",
      "--max-lora-rank",
      "16",
      "--lora",
      sql,
      "--lora",
      `${chat}/`,
      "--convert-script",
      "/opt/examples/llama/convert_checkpoint.py",
      "--dry-run",
    ]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const lines = r.stdout
      .trimEnd()
      .split("\n")
      .map((line) => line.trimEnd());
    expect(lines).toEqual([
      `python3 /opt/examples/llama/convert_checkpoint.py --model_dir ${model} --output_dir ${engine}-checkpoint --dtype bfloat16 --tp_size 2 --pp_size 1`,
      `trtllm-build --checkpoint_dir ${engine}-checkpoint --output_dir ${engine} --gemm_plugin bfloat16 --lora_plugin bfloat16 --use_paged_context_fmha enable --max_batch_size 8 --max_seq_len 4096 --max_lora_rank 16 --lora_target_modules attn_q attn_k attn_v attn_dense mlp_h_to_4h mlp_4h_to_h mlp_gate --lora_dir ${sql} --lora_ckpt_source hf`,
      `cp ${model}/tokenizer.json ${engine}/`,
      `cp ${model}/tokenizer_config.json ${engine}/`,
      `cp ${model}/generation_config.json ${engine}/`,
      `mkdir -p ${engine}-lora`,
      `multilora extract -i ${sql} -o ${engine}-lora/sql.safetensors -t bfloat16 --base ${engine}`,
      `multilora extract -i ${chat}/ -o ${engine}-lora/chat.safetensors -t bfloat16 --base ${engine}`,
    ]);
  });
});

describe("docker/run.sh", () => {
  test("usage without arguments (exit 2) and with --help (exit 0); a dir without config.json is refused", () => {
    const none = bash(RUN, []);
    expect(none.status).toBe(2);
    expect(none.stdout).toContain("Usage: docker/run.sh <engine-dir> [lora-dir]");
    expect(bash(RUN, ["--help"]).status).toBe(0);
    const bad = bash(RUN, [work]);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain(`${work}/config.json does not exist`);
  });
});
