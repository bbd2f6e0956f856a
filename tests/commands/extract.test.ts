/** `multilora extract` and `scripts/extract_lora.ts` as a user runs them: real processes, real files. */
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readSafetensors } from "../../src/formats/safetensors-reader.ts";
import { FIXTURES, HAVE_FIXTURES } from "../helpers/fixtures.ts";
import { ALL_SEVEN, SMALL_GQA, writeHfConfig, writePeftAdapter } from "../helpers/peft.ts";

const ROOT = join(import.meta.dir, "../..");
const work = mkdtempSync(join(tmpdir(), "multilora-cli-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
let n = 0;
const fresh = (name = "adapter") => join(work, `${name}-${++n}`);

function run(args: string[], script = "src/cli.ts") {
  const r = spawnSync(process.execPath, [join(ROOT, script), ...args], { encoding: "utf8", cwd: work });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** An output folder, so each failure can assert that nothing at all was written into it. */
function outDir(): string {
  const dir = fresh("out");
  mkdirSync(dir);
  return dir;
}

describe("multilora extract", () => {
  test("converts, prints one summary line and writes <dir>/<adapter-name>.safetensors for a directory -o", () => {
    const adapter = writePeftAdapter(fresh("my-lora"), { modules: ALL_SEVEN, dtype: "F32" });
    const out = outDir();
    const r = run(["extract", "-i", adapter.dir, "-o", out, "-t", "bfloat16"]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const name = adapter.dir.split("/").pop();
    expect(readdirSync(out)).toEqual([`${name}.safetensors`]);
    const lines = r.stdout.trim().split("\n");
    expect(lines.length).toBe(1);
    expect(lines[0]).toMatch(
      new RegExp(
        `^${name}\\.safetensors: 21 rows, modules q_proj->attn_q k_proj->attn_k v_proj->attn_v o_proj->attn_dense ` +
          "gate_proj->mlp_h_to_4h up_proj->mlp_gate down_proj->mlp_4h_to_h, 3 layers, rank 4, bfloat16, .* \\(\\d+ bytes\\) in \\d+\\.\\d\\d s$",
      ),
    );
    const file = readSafetensors(join(out, `${name}.safetensors`));
    expect(file.info("weights").dtype).toBe("BF16");
    expect(lines[0]).toContain(`(${file.bytes.length} bytes)`);
  });

  test("scripts/extract_lora.ts takes llgtrt's long flags and writes the same bytes", () => {
    const adapter = writePeftAdapter(fresh(), { modules: ["q_proj", "v_proj"] });
    const out = outDir();
    expect(run(["extract", "-i", adapter.dir, "-o", join(out, "a.safetensors")]).status).toBe(0);
    const r = run(
      ["--in-file", adapter.dir, "--out-file", join(out, "b.safetensors")],
      "scripts/extract_lora.ts",
    );
    expect(r.status).toBe(0);
    expect(
      Buffer.compare(
        readSafetensors(join(out, "a.safetensors")).bytes,
        readSafetensors(join(out, "b.safetensors")).bytes,
      ),
    ).toBe(0);
  });

  test("--base with a matching model passes; with a different one it fails listing the problems", () => {
    const adapter = writePeftAdapter(fresh(), { modules: ["q_proj"] });
    const out = outDir();
    const good = writeHfConfig(fresh("base"), SMALL_GQA);
    expect(run(["extract", "-i", adapter.dir, "-o", out, "--base", good]).status).toBe(0);
    const bad = writeHfConfig(fresh("base"), { ...SMALL_GQA, hidden: 32, heads: 2 });
    const out2 = outDir();
    const r = run(["extract", "-i", adapter.dir, "-o", out2, "--base", bad]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("attn_q (layers 0-2): lora_A is [4, 64] but the model's input width is 32");
    expect(r.stderr).toContain("attn_q (layers 0-2): lora_B is [64, 4] but the model's output width is 32");
    expect(readdirSync(out2)).toEqual([]);
  });

  test("--skip-unsupported turns skippable content into warnings", () => {
    const adapter = writePeftAdapter(fresh(), { config: { modules_to_save: ["lm_head"] } });
    const out = outDir();
    const refused = run(["extract", "-i", adapter.dir, "-o", out]);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toContain(
      "modules_to_save [lm_head]: fully trained copies of modules cannot be carried (--skip-unsupported skips it)",
    );
    expect(readdirSync(out)).toEqual([]);
    const skipped = run(["extract", "-i", adapter.dir, "-o", out, "--skip-unsupported"]);
    expect(skipped.status).toBe(0);
    expect(skipped.stderr).toContain("warning: skipped modules_to_save [lm_head]");
  });
});

describe("bad input: a message naming the file and the problem, a non-zero exit, and no output file", () => {
  const cases: [string, (dir: string) => string[], RegExp][] = [
    ["a missing input folder", (dir) => ["-i", join(dir, "nope")], /error: .*\/nope: does not exist/],
    [
      "a folder without adapter_config.json",
      (dir) => {
        const a = writePeftAdapter(join(dir, "a"));
        rmSync(join(a.dir, "adapter_config.json"));
        return ["-i", a.dir];
      },
      /has no adapter_config\.json; is it a PEFT adapter folder\?/,
    ],
    [
      "an invalid adapter_config.json",
      (dir) => {
        const a = writePeftAdapter(join(dir, "a"));
        writeFileSync(join(a.dir, "adapter_config.json"), '{"r": -1, "lora_alpha": "x"}');
        return ["-i", a.dir];
      },
      /adapter_config\.json is not valid:\n\s+- r: .*\n\s+- lora_alpha: /,
    ],
    [
      "a truncated adapter_model.safetensors",
      (dir) => {
        const a = writePeftAdapter(join(dir, "a"));
        const p = join(a.dir, "adapter_model.safetensors");
        truncateSync(p, readSafetensors(p).bytes.length - 10);
        return ["-i", a.dir];
      },
      /adapter_model\.safetensors: tensor data ends at byte \d+ but the file has \d+ bytes: the file is truncated/,
    ],
    [
      "a corrupt header",
      (dir) => {
        const a = writePeftAdapter(join(dir, "a"));
        const p = join(a.dir, "adapter_model.safetensors");
        const bytes = readSafetensors(p).bytes.slice();
        bytes[9] = 0x7d; // '}' inside the JSON
        writeFileSync(p, bytes);
        return ["-i", a.dir];
      },
      /adapter_model\.safetensors: header is not valid JSON/,
    ],
    [
      "wrong shapes",
      (dir) => {
        const a = writePeftAdapter(join(dir, "a"), {
          layers: [0],
          modules: ["q_proj"],
          extraTensors: [
            {
              name: "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
              dtype: "F32",
              shape: [4, 64],
              data: new Float32Array(256),
            },
            {
              name: "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
              dtype: "F32",
              shape: [32, 2],
              data: new Float32Array(64),
            },
          ],
        });
        return ["-i", a.dir];
      },
      /model\.layers\.0\.self_attn\.v_proj: lora_A is \[4, 64\] but lora_B is \[32, 2\]: the ranks differ/,
    ],
    [
      "NaN in the weights",
      (dir) => {
        const a = writePeftAdapter(join(dir, "a"), {
          edit: (name, v) => {
            if (name.includes("layers.1.self_attn.q_proj.lora_B")) v[0] = Number.NaN;
          },
        });
        return ["-i", a.dir];
      },
      /model\.layers\.1\.self_attn\.q_proj: 1 NaN or Inf values/,
    ],
    [
      "an unknown module",
      (dir) => {
        const a = writePeftAdapter(join(dir, "a"), {
          extraTensors: [
            {
              name: "base_model.model.model.layers.0.self_attn.rotary.lora_A.weight",
              dtype: "F32",
              shape: [4, 64],
              data: new Float32Array(256),
            },
            {
              name: "base_model.model.model.layers.0.self_attn.rotary.lora_B.weight",
              dtype: "F32",
              shape: [64, 4],
              data: new Float32Array(256),
            },
          ],
        });
        return ["-i", a.dir];
      },
      /LoRA on unknown module "rotary" \(supported: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, qkv_proj, gate_up_proj\): 2 tensors/,
    ],
    [
      "an unknown dtype",
      (dir) => ["-i", writePeftAdapter(join(dir, "a")).dir, "-t", "int8"],
      /-t int8: the dtype must be float16, bfloat16 or float32/,
    ],
  ];
  for (const [what, setup, message] of cases) {
    test(what, () => {
      const dir = fresh("case");
      mkdirSync(dir);
      const out = outDir();
      const r = run(["extract", ...setup(dir), "-o", out]);
      expect(r.stderr).toMatch(message);
      expect(r.status).not.toBe(0);
      expect(r.stdout).toBe("");
      expect(readdirSync(out)).toEqual([]);
    });
  }

  test("an unwritable output (its folder does not exist, or is a file)", () => {
    const adapter = writePeftAdapter(fresh());
    const missing = run(["extract", "-i", adapter.dir, "-o", join(work, "no", "such", "x.safetensors")]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/x\.safetensors: the output directory .*no\/such does not exist/);
    const blocker = join(fresh("file"));
    writeFileSync(blocker, "x");
    const underFile = run(["extract", "-i", adapter.dir, "-o", join(blocker, "x.safetensors")]);
    expect(underFile.status).toBe(1);
    expect(underFile.stderr).toContain("error:");
  });

  test("usage mistakes exit 2 and point at --help", () => {
    const r = run(["extract", "-i", "x"]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("missing -o <file.safetensors | dir>");
    expect(r.stderr).toContain('Run "multilora extract --help" for usage.');
    expect(run(["extract", "--frobnicate"]).status).toBe(2);
    expect(run(["frobnicate"]).stderr).toContain('unknown command "frobnicate"');
    const help = run(["extract", "--help"]);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain("-t, --dtype <dtype>");
  });
});

describe("multilora inspect", () => {
  test("describes a converted file and a PEFT folder, as text and as JSON", () => {
    const adapter = writePeftAdapter(fresh("insp"), { modules: ["q_proj", "down_proj"], rank: 4, alpha: 16 });
    const out = outDir();
    expect(
      run(["extract", "-i", adapter.dir, "-o", join(out, "x.safetensors"), "-t", "float16"]).status,
    ).toBe(0);
    const text = run(["inspect", join(out, "x.safetensors")]);
    expect(text.status).toBe(0);
    expect(text.stdout).toContain("format:   TensorRT-LLM LoRA");
    expect(text.stdout).toContain("valid:    yes");
    expect(text.stdout).toContain("dtype:    float16");
    expect(text.stdout).toContain("rows:     6 (3 layers, rank 4)");
    expect(text.stdout).toContain("scale:    folded into B (r 4, lora_alpha 16)");
    expect(text.stdout).toMatch(/attn_q\s+layers 0-2, rank 4/);
    expect(text.stdout).toMatch(/mlp_4h_to_h\s+layers 0-2, rank 4/);

    const json = run(["inspect", adapter.dir, "--json"]);
    expect(json.status).toBe(0);
    const report = JSON.parse(json.stdout);
    expect(report).toMatchObject({
      format: "peft",
      valid: true,
      dtype: "float32",
      rows: 6,
      layers: 3,
      ranks: [4],
      problems: [],
    });
    expect(report.modules).toEqual([
      { module: "attn_q", hfModule: "q_proj", layers: "layers 0-2", ranks: [4], scales: [4] },
      { module: "mlp_4h_to_h", hfModule: "down_proj", layers: "layers 0-2", ranks: [4], scales: [4] },
    ]);
  });

  test("an invalid adapter is reported with its problems and exit status 1", () => {
    const dir = fresh();
    mkdirSync(dir);
    const path = join(dir, "broken.safetensors");
    writeFileSync(path, new Uint8Array(5));
    const r = run(["inspect", path]);
    expect(r.status).toBe(1);
    expect(r.stdout).toContain("valid:    no");
    expect(r.stdout).toContain("is 5 bytes long, too short for a safetensors file");
  });

  test("--base checks a converted file against an engine", () => {
    const adapter = writePeftAdapter(fresh(), { modules: ["q_proj"], rank: 8, config: { r: 8 } });
    const out = outDir();
    expect(run(["extract", "-i", adapter.dir, "-o", join(out, "x.safetensors")]).status).toBe(0);
    const engine = fresh("engine");
    mkdirSync(engine);
    writeFileSync(
      join(engine, "config.json"),
      JSON.stringify({
        pretrained_config: {
          dtype: "float16",
          hidden_size: 64,
          intermediate_size: 96,
          num_hidden_layers: 3,
          num_attention_heads: 4,
          num_key_value_heads: 2,
          head_size: 16,
        },
        build_config: {
          plugin_config: { lora_plugin: "float16" },
          lora_config: { max_lora_rank: 4, lora_target_modules: ["attn_q"] },
        },
      }),
    );
    const r = run(["inspect", join(out, "x.safetensors"), "--base", engine]);
    expect(r.status).toBe(1);
    expect(r.stdout).toContain(
      "the weights are float32 but the engine's dtype is float16: convert with -t float16",
    );
    expect(r.stdout).toContain("attn_q (layers 0-2): rank 8 exceeds the engine's max_lora_rank 4");
  });
});

describe.skipIf(!HAVE_FIXTURES)("the real fixtures from the command line", () => {
  test("the SmolLM2 adapter converts; its folder copied without safetensors but with a .bin gets advice", () => {
    const out = outDir();
    const r = run([
      "extract",
      "-i",
      join(FIXTURES, "smollm2-360m-instruct-lora-r8"),
      "-o",
      out,
      "-t",
      "bf16",
    ]);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(
      /^smollm2-360m-instruct-lora-r8\.safetensors: 64 rows, modules q_proj->attn_q v_proj->attn_v, 32 layers, rank 8, bfloat16/,
    );
    const copy = fresh("copy");
    mkdirSync(copy);
    copyFileSync(
      join(FIXTURES, "smollm2-360m-instruct-lora-r8/adapter_config.json"),
      join(copy, "adapter_config.json"),
    );
    writeFileSync(join(copy, "adapter_model.bin"), "not read");
    const out2 = outDir();
    const bin = run(["extract", "-i", copy, "-o", out2]);
    expect(bin.status).toBe(1);
    expect(bin.stderr).toContain("adapter_model.bin: PyTorch pickle files are not read");
    expect(readdirSync(out2)).toEqual([]);
  });
});
