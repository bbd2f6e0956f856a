import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { FloatDType } from "../../src/formats/dtypes.ts";
import { readBaseModel } from "../../src/formats/model-config.ts";
import { readSafetensors } from "../../src/formats/safetensors-reader.ts";
import { type ConvertOptions, convertPeftAdapter } from "../../src/lora/convert.ts";
import { readPeftAdapter } from "../../src/lora/peft-adapter.ts";
import { expectedRow, rowBits } from "../helpers/expected.ts";
import {
  ALL_SEVEN,
  type HfModule,
  modulePath,
  SMALL_GQA,
  type WrittenAdapter,
  writeEngineConfig,
  writeHfConfig,
  writePeftAdapter,
} from "../helpers/peft.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-convert-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
let counter = 0;
const fresh = (name = "adapter") => join(work, `${name}-${++counter}`);

/** TensorRT-LLM module ids, written out here independently of src/formats/lora-modules.ts. */
const MODULE_ID: Record<HfModule, number> = {
  qkv_proj: 0,
  q_proj: 1,
  k_proj: 2,
  v_proj: 3,
  o_proj: 4,
  gate_proj: 5,
  down_proj: 6,
  up_proj: 7,
  gate_up_proj: 18,
};

async function convert(dir: string, options: Omit<ConvertOptions, "output"> = {}) {
  const output = join(work, `out-${++counter}.safetensors`);
  const warnings: string[] = [];
  const summary = await convertPeftAdapter(readPeftAdapter(dir), {
    output,
    onWarning: (w) => warnings.push(w),
    ...options,
  });
  const file = readSafetensors(output);
  const config = file.view("config") as Int32Array;
  const rows: [number, number, number][] = [];
  for (let i = 0; i < config.length / 3; i++)
    rows.push([config[3 * i], config[3 * i + 1], config[3 * i + 2]] as [number, number, number]);
  return {
    output,
    summary,
    file,
    rows,
    warnings,
    weights: file.view("weights") as Float32Array | Uint16Array,
  };
}

/** Checks every row of the output against A and B·scale computed here from the PEFT tensors. */
function checkRows(
  written: WrittenAdapter,
  out: Awaited<ReturnType<typeof convert>>,
  dtype: FloatDType,
  scaleOf: (path: string, rank: number) => number,
) {
  const rowLength = out.file.info("weights").shape[1] as number;
  const byId = new Map(Object.entries(MODULE_ID).map(([name, id]) => [id, name as HfModule]));
  let checked = 0;
  out.rows.forEach(([id, layer, rank], i) => {
    const module = byId.get(id) as HfModule;
    const path = modulePath(layer, module);
    const a = written.values.get(`base_model.model.${path}.lora_A.weight`) as Float32Array;
    const b = written.values.get(`base_model.model.${path}.lora_B.weight`) as Float32Array;
    expect(a.length / (written.shapes.get(`base_model.model.${path}.lora_A.weight`)?.[1] as number)).toBe(
      rank,
    );
    const expected = expectedRow(a, b, scaleOf(path, rank), dtype, rowLength, module === "gate_up_proj");
    expect(rowBits(out.weights, i, rowLength)).toEqual(expected);
    checked++;
  });
  return checked;
}

describe("conversion of every module on a GQA model", () => {
  for (const [from, to] of [
    ["F32", "F32"],
    ["F32", "BF16"],
    ["F32", "F16"],
    ["BF16", "BF16"],
    ["F16", "F16"],
    ["BF16", "F32"],
    ["F16", "BF16"],
  ] as const) {
    test(`${from} adapter to ${to}: each row is A, then B times alpha/r, then zero padding`, async () => {
      const written = writePeftAdapter(fresh(), {
        modules: ALL_SEVEN,
        rank: 4,
        alpha: 8,
        dtype: from,
        seed: 7,
      });
      const out = await convert(written.dir, { dtype: to });
      expect(out.file.info("weights").dtype).toBe(to);
      expect(out.rows.length).toBe(7 * SMALL_GQA.layers);
      // R = the longest row: gate/up/down are rank 4 x (64 + 96).
      expect(out.file.info("weights").shape).toEqual([21, 4 * (64 + 96)]);
      expect(out.file.info("config").shape).toEqual([21, 3]);
      expect(out.file.info("config").dtype).toBe("I32");
      expect(checkRows(written, out, to, () => 8 / 4)).toBe(21);
    });
  }

  test("config rows name the module ids of ARCHITECTURE.md: gate_proj is 5 (mlp_h_to_4h), up_proj is 7 (mlp_gate)", async () => {
    const written = writePeftAdapter(fresh(), { modules: ALL_SEVEN, layers: [1] });
    const out = await convert(written.dir);
    expect(out.rows.map(([id]) => id).sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(out.rows.every(([, layer, r]) => layer === 1 && r === 4)).toBe(true);
  });

  test("the output dtype defaults to the adapter's own", async () => {
    for (const dtype of ["F32", "F16", "BF16"] as const) {
      const out = await convert(writePeftAdapter(fresh(), { dtype }).dir);
      expect(out.summary.dtype).toBe(dtype);
      expect(out.file.info("weights").dtype).toBe(dtype);
    }
  });
});

describe("scale", () => {
  test("use_rslora folds alpha / sqrt(r) into B", async () => {
    const written = writePeftAdapter(fresh(), { rank: 4, alpha: 6, config: { use_rslora: true } });
    const out = await convert(written.dir);
    expect(checkRows(written, out, "F32", () => 6 / Math.sqrt(4))).toBe(6);
  });

  test("rank_pattern and alpha_pattern give per-module rank and alpha; the first matching key wins", async () => {
    const rankPattern = { "layers.1.self_attn.q_proj": 2, q_proj: 6, "model.layers.2.self_attn.v_proj": 3 };
    const alphaPattern = { v_proj: 12, "layers.0.self_attn.q_proj": 5 };
    const rankFor = (path: string) =>
      path === "model.layers.1.self_attn.q_proj"
        ? 2
        : path.endsWith("q_proj")
          ? 6
          : path === "model.layers.2.self_attn.v_proj"
            ? 3
            : 4;
    const alphaFor = (path: string) =>
      path.endsWith("v_proj") ? 12 : path === "model.layers.0.self_attn.q_proj" ? 5 : 8;
    const written = writePeftAdapter(fresh(), {
      rank: 4,
      alpha: 8,
      rankFor,
      config: { rank_pattern: rankPattern, alpha_pattern: alphaPattern },
    });
    const out = await convert(written.dir);
    expect(out.rows).toContainEqual([1, 1, 2]);
    expect(out.rows).toContainEqual([1, 0, 6]);
    expect(out.rows).toContainEqual([3, 2, 3]);
    expect(out.rows).toContainEqual([3, 0, 4]);
    expect(out.summary.ranks).toEqual([2, 3, 4, 6]);
    expect(checkRows(written, out, "F32", (path, rank) => alphaFor(path) / rank)).toBe(6);
  });

  test("a rank that disagrees with the config is refused, naming the module", async () => {
    const written = writePeftAdapter(fresh(), { rank: 4, config: { r: 8 } });
    expect(() => readPeftAdapter(written.dir)).toThrow(
      /model\.layers\.0\.self_attn\.q_proj: the tensors have rank 4 but adapter_config\.json gives r = 8/,
    );
  });
});

describe("fused modules", () => {
  test("qkv_proj becomes module 0 with the fused width", async () => {
    const written = writePeftAdapter(fresh(), { modules: ["qkv_proj"], rank: 2 });
    const out = await convert(written.dir);
    expect(out.rows.map(([id]) => id)).toEqual([0, 0, 0]);
    // in 64, out (4 + 2 * 2) * 16 = 128
    expect(out.file.info("weights").shape).toEqual([3, 2 * (64 + 128)]);
    expect(checkRows(written, out, "F32", () => 8 / 2)).toBe(3);
  });

  test("gate_up_proj becomes module 18 with the halves of B swapped to [up; gate]", async () => {
    const written = writePeftAdapter(fresh(), { modules: ["gate_up_proj"], rank: 2 });
    const out = await convert(written.dir, { dtype: "BF16" });
    expect(out.rows.map(([id]) => id)).toEqual([18, 18, 18]);
    expect(checkRows(written, out, "BF16", () => 4)).toBe(3);
    // The first value of the written B half is the first "up" value: B row I (of 2I), column 0.
    const b = written.values.get(
      `base_model.model.${modulePath(0, "gate_up_proj")}.lora_B.weight`,
    ) as Float32Array;
    const rowLength = out.file.info("weights").shape[1] as number;
    const firstB = rowBits(out.weights, 0, rowLength)[2 * 64];
    expect(firstB).toBe(
      expectedRow(new Float32Array(), b.subarray(96 * 2, 96 * 2 + 1), 4, "BF16", 1)[0] as number,
    );
  });
});

describe("layers_to_transform", () => {
  test("an adapter on some layers converts those layers only", async () => {
    const written = writePeftAdapter(fresh(), { layers: [0, 2], config: { layers_to_transform: [0, 2] } });
    const out = await convert(written.dir);
    expect(out.rows.map(([, layer]) => layer)).toEqual([0, 0, 2, 2]);
    expect(out.summary.layers).toBe(2);
  });

  test("a tensor on a layer outside layers_to_transform is refused", () => {
    const written = writePeftAdapter(fresh(), { layers: [0, 1], config: { layers_to_transform: 0 } });
    expect(() => readPeftAdapter(written.dir)).toThrow(/layer 1 is not in layers_to_transform \[0\]/);
  });
});

describe("provenance metadata", () => {
  test("records source, base model, r, alpha, targets, the source sha256 and the converter", async () => {
    const written = writePeftAdapter(fresh("my-adapter"), {
      modules: ["q_proj", "o_proj"],
      rank: 4,
      alpha: 16,
    });
    const out = await convert(written.dir, { dtype: "BF16" });
    const sha = createHash("sha256")
      .update(readFileSync(join(written.dir, "adapter_model.safetensors")))
      .digest("hex");
    expect(out.file.metadata).toMatchObject({
      format: "trtllm-lora",
      source: written.dir.split("/").pop(),
      base_model_name_or_path: "test/tiny-llama",
      r: "4",
      lora_alpha: "16",
      use_rslora: "false",
      target_modules: '["q_proj","o_proj"]',
      dtype: "bfloat16",
      source_sha256: sha,
    });
    expect(out.file.metadata.converter).toMatch(/^multilora \d+\.\d+\.\d+/);
    expect(out.summary.sourceSha256).toBe(sha);
  });

  test("a big adapter is hashed on a worker while it is read and gets the same sha256", async () => {
    // 16 layers x 7 modules x rank 16 on hidden 512: about 11 MB, above the worker threshold.
    const dims = { hidden: 512, intermediate: 2048, layers: 16, heads: 8, kvHeads: 2, headDim: 64 };
    const written = writePeftAdapter(fresh(), { dims, modules: ALL_SEVEN, rank: 16 });
    const out = await convert(written.dir);
    const bytes = readFileSync(join(written.dir, "adapter_model.safetensors"));
    expect(bytes.length).toBeGreaterThan(8 << 20);
    expect(out.summary.sourceSha256).toBe(createHash("sha256").update(bytes).digest("hex"));
  });
});

describe("refusals: every problem listed, nothing written", () => {
  const noOutput = (before: string[]) =>
    expect(readdirSync(work).filter((f) => f.startsWith("out-") || f.startsWith(".out-"))).toEqual(before);
  const outputs = () => readdirSync(work).filter((f) => f.startsWith("out-") || f.startsWith(".out-"));

  test("settings that change every module's math are listed together and never skipped", async () => {
    const written = writePeftAdapter(fresh(), {
      config: {
        use_dora: true,
        fan_in_fan_out: true,
        bias: "lora_only",
        lora_bias: true,
        layer_replication: [[0, 2]],
        use_qalora: true,
      },
    });
    const before = outputs();
    const attempt = convert(written.dir, { skipUnsupported: true });
    await expect(attempt).rejects.toThrow(/use_dora: DoRA/);
    const message = await attempt.catch((e: Error) => e.message);
    for (const what of [
      "use_dora",
      "fan_in_fan_out",
      'bias "lora_only"',
      "lora_bias",
      "layer_replication",
      "use_qalora",
    ]) {
      expect(message).toContain(what);
    }
    noOutput(before);
  });

  test("skippable content is listed with a hint, and --skip-unsupported converts the rest with warnings", async () => {
    const hidden = SMALL_GQA.hidden;
    const extra = [
      {
        name: "base_model.model.model.embed_tokens.lora_embedding_A",
        dtype: "F32" as const,
        shape: [4, 100],
        data: new Float32Array(400),
      },
      {
        name: "base_model.model.model.embed_tokens.lora_embedding_B",
        dtype: "F32" as const,
        shape: [hidden, 4],
        data: new Float32Array(hidden * 4),
      },
      {
        name: "base_model.model.lm_head.lora_A.weight",
        dtype: "F32" as const,
        shape: [4, hidden],
        data: new Float32Array(4 * hidden),
      },
      {
        name: "base_model.model.lm_head.lora_B.weight",
        dtype: "F32" as const,
        shape: [100, 4],
        data: new Float32Array(400),
      },
      {
        name: "base_model.model.model.layers.0.mlp.experts.lora_A.weight",
        dtype: "F32" as const,
        shape: [4, hidden],
        data: new Float32Array(4 * hidden),
      },
      {
        name: "base_model.model.model.layers.0.mlp.experts.lora_B.weight",
        dtype: "F32" as const,
        shape: [8, 4],
        data: new Float32Array(32),
      },
      {
        name: "base_model.model.score.weight",
        dtype: "F32" as const,
        shape: [2, hidden],
        data: new Float32Array(2 * hidden),
      },
    ];
    const written = writePeftAdapter(fresh(), {
      extraTensors: extra,
      config: {
        modules_to_save: ["score"],
        target_parameters: ["mlp.experts.gate_up_proj"],
        trainable_token_indices: [5, 6],
      },
    });
    const before = outputs();
    const failed = await convert(written.dir).catch((e: Error) => e.message);
    for (const what of [
      "modules_to_save [score]",
      "target_parameters [mlp.experts.gate_up_proj]",
      "trainable_token_indices",
      "embedding LoRA (lora_embedding_A/B): 2 tensors",
      "LoRA on lm_head: 2 tensors",
      'LoRA on unknown module "experts"',
      "full weights of modules_to_save: 1 tensor",
      "(--skip-unsupported skips it)",
    ]) {
      expect(failed).toContain(what);
    }
    noOutput(before);
    const written2 = writePeftAdapter(fresh(), {
      extraTensors: extra,
      config: { modules_to_save: ["score"] },
    });
    const out = await convert(written2.dir, { skipUnsupported: true });
    expect(out.rows.length).toBe(6);
    expect(out.warnings.some((w) => w.startsWith("skipped LoRA on lm_head"))).toBe(true);
    expect(out.warnings.some((w) => w.startsWith("skipped modules_to_save [score]"))).toBe(true);
    expect(checkRows(written2, out, "F32", () => 2)).toBe(6);
  });

  test("NaN or Inf in the weights is refused, naming the module, with no output", async () => {
    const written = writePeftAdapter(fresh(), {
      edit: (name, v) => {
        if (name.includes("layers.2.self_attn.v_proj.lora_B")) v[3] = Number.NaN;
        if (name.includes("layers.1.self_attn.q_proj.lora_A")) v[0] = Number.POSITIVE_INFINITY;
      },
    });
    const before = outputs();
    const message = await convert(written.dir, { dtype: "BF16" }).catch((e: Error) => e.message);
    expect(message).toContain("model.layers.2.self_attn.v_proj: 1 NaN or Inf values");
    expect(message).toContain("model.layers.1.self_attn.q_proj: 1 NaN or Inf values");
    noOutput(before);
  });

  test("B times the scale beyond float16's range is refused with the dtype named", async () => {
    const written = writePeftAdapter(fresh(), {
      alpha: 4000,
      edit: (name, v) => {
        if (name.includes("layers.0.self_attn.q_proj.lora_B")) v[0] = 100;
      },
    });
    const message = await convert(written.dir, { dtype: "F16" }).catch((e: Error) => e.message);
    expect(message).toContain("model.layers.0.self_attn.q_proj: B x scale 1000 overflows float16");
    const ok = await convert(written.dir, { dtype: "BF16" });
    expect(ok.rows.length).toBe(6);
  });

  test("a missing lora_B and a shape mismatch are both reported", () => {
    const dir = fresh();
    writePeftAdapter(dir, {
      layers: [0],
      modules: ["q_proj"],
      extraTensors: [
        {
          name: "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight",
          dtype: "F32",
          shape: [4, 64],
          data: new Float32Array(256),
        },
        {
          name: "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight",
          dtype: "F32",
          shape: [4, 64],
          data: new Float32Array(256),
        },
        {
          name: "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",
          dtype: "F32",
          shape: [32, 3],
          data: new Float32Array(96),
        },
      ],
    });
    let message = "";
    try {
      readPeftAdapter(dir);
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toContain("model.layers.1.self_attn.k_proj: lora_B is missing (lora_A is present)");
    expect(message).toContain(
      "model.layers.1.self_attn.v_proj: lora_A is [4, 64] but lora_B is [32, 3]: the ranks differ",
    );
  });

  test("an integer tensor where weights belong is refused", () => {
    const dir = fresh();
    writePeftAdapter(dir, {
      layers: [0],
      modules: ["q_proj"],
      extraTensors: [
        {
          name: "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight",
          dtype: "I32",
          shape: [4, 64],
          data: new Int32Array(256),
        },
        {
          name: "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight",
          dtype: "F32",
          shape: [32, 4],
          data: new Float32Array(128),
        },
      ],
    });
    expect(() => readPeftAdapter(dir)).toThrow(
      /k_proj\.lora_A\.weight: dtype I32; LoRA weights must be F32, F16 or BF16/,
    );
  });

  test("adapter_model.bin alone gets an explanation of what to do", async () => {
    const dir = fresh();
    writePeftAdapter(dir);
    rmSync(join(dir, "adapter_model.safetensors"));
    await Bun.write(join(dir, "adapter_model.bin"), "pickle");
    expect(() => readPeftAdapter(dir)).toThrow(
      /adapter_model\.bin: PyTorch pickle files are not read.*safe_serialization=True/,
    );
  });

  test("a missing or invalid adapter_config.json is named", async () => {
    const dir = fresh();
    writePeftAdapter(dir);
    await Bun.write(join(dir, "adapter_config.json"), '{"r": "eight", "lora_alpha": 16');
    expect(() => readPeftAdapter(dir)).toThrow(/adapter_config\.json: not valid JSON/);
    await Bun.write(join(dir, "adapter_config.json"), '{"r": "eight", "lora_alpha": [], "use_dora": 1}');
    let message = "";
    try {
      readPeftAdapter(dir);
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/adapter_config\.json is not valid:/);
    expect(message).toMatch(/- r: /);
    expect(message).toMatch(/- lora_alpha: /);
    expect(message).toMatch(/- use_dora: /);
    rmSync(join(dir, "adapter_config.json"));
    expect(() => readPeftAdapter(dir)).toThrow(/has no adapter_config\.json; is it a PEFT adapter folder\?/);
  });
});

describe("--base", () => {
  const dims = SMALL_GQA;

  test("an adapter that fits a Hugging Face config converts", async () => {
    const base = readBaseModel(writeHfConfig(fresh("hf"), dims));
    const out = await convert(writePeftAdapter(fresh(), { modules: ALL_SEVEN }).dir, { base });
    expect(out.rows.length).toBe(21);
  });

  test("wrong widths and missing layers are all listed, grouped over layers", async () => {
    const base = readBaseModel(writeHfConfig(fresh("hf"), { ...dims, hidden: 128, layers: 2, kvHeads: 4 }));
    const written = writePeftAdapter(fresh(), { modules: ["q_proj", "v_proj"] });
    const message = await convert(written.dir, { base }).catch((e: Error) => e.message);
    expect(message).toContain("does not fit");
    expect(message).toContain("attn_q (layers 0-2): lora_A is [4, 64] but the model's input width is 128");
    expect(message).toContain("attn_v (layers 0-2): lora_B is [32, 4] but the model's output width is 64");
    expect(message).toContain("attn_q (layer 2): layer 2 does not exist (the model has 2 layers)");
  });

  test("an engine imposes its dtype (by default), max_lora_rank and lora_target_modules", async () => {
    const engine = readBaseModel(
      writeEngineConfig(fresh("engine"), dims, { dtype: "float16", maxLoraRank: 8 }),
    );
    const written = writePeftAdapter(fresh(), { modules: ALL_SEVEN, rank: 4 });
    const out = await convert(written.dir, { base: engine });
    expect(out.summary.dtype).toBe("F16");
    expect(checkRows(written, out, "F16", () => 2)).toBe(21);

    const narrow = readBaseModel(
      writeEngineConfig(fresh("engine"), dims, {
        dtype: "bfloat16",
        maxLoraRank: 2,
        targetModules: ["attn_q", "attn_v"],
      }),
    );
    const message = await convert(written.dir, { base: narrow, dtype: "F32" }).catch((e: Error) => e.message);
    expect(message).toContain(
      "the weights are float32 but the engine's dtype is bfloat16: convert with -t bfloat16",
    );
    expect(message).toContain("attn_q (layers 0-2): rank 4 exceeds the engine's max_lora_rank 2");
    expect(message).toContain(
      "attn_k (layers 0-2): not among the engine's lora_target_modules [attn_q, attn_v]",
    );
  });

  test("an engine without the LoRA plugin is refused", async () => {
    const engine = readBaseModel(writeEngineConfig(fresh("engine"), dims, { plugin: null }));
    const message = await convert(writePeftAdapter(fresh()).dir, { base: engine }).catch(
      (e: Error) => e.message,
    );
    expect(message).toContain("the engine was built without the LoRA plugin");
  });

  test("attn_dense on an engine whose heads x head_dim differs from hidden is refused", async () => {
    const odd = { ...dims, heads: 4, headDim: 8 }; // q width 32, hidden 64
    const engine = readBaseModel(writeEngineConfig(fresh("engine"), odd, { dtype: "float32" }));
    const written = writePeftAdapter(fresh(), { dims: odd, modules: ["o_proj"] });
    const message = await convert(written.dir, { base: engine }).catch((e: Error) => e.message);
    expect(message).toContain(
      "TensorRT-LLM sizes attn_dense as hidden -> hidden (64), but this model's is 32 -> 64",
    );
  });
});

test("the output appears only when complete: no temporary file is left behind after success", async () => {
  const out = await convert(writePeftAdapter(fresh()).dir);
  expect(existsSync(out.output)).toBe(true);
  expect(readdirSync(work).some((f) => f.includes(".tmp-"))).toBe(false);
});
