import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import * as v from "valibot";
import {
  configWarnings,
  layersToTransform,
  matchPattern,
  moduleScaling,
  PeftConfigSchema,
  readPeftConfig,
  unsupportedSettings,
} from "../../src/lora/peft-config.ts";
import { FIXTURES, HAVE_FIXTURES } from "../helpers/fixtures.ts";

const parse = (value: unknown) => v.parse(PeftConfigSchema, value);

describe("the adapter_config.json schema", () => {
  test.skipIf(!HAVE_FIXTURES)(
    "reads a recent PEFT's config (SmolLM2 fixture) and an older one's (Qwen2.5 fixture)",
    () => {
      const recent = readPeftConfig(join(FIXTURES, "smollm2-360m-instruct-lora-r8/adapter_config.json"));
      expect(recent).toMatchObject({
        r: 8,
        lora_alpha: 16,
        target_modules: ["v_proj", "q_proj"],
        use_dora: false,
        use_qalora: false,
      });
      expect(recent.base_model_name_or_path).toBe("HuggingFaceTB/SmolLM2-360M-Instruct");
      expect(unsupportedSettings(recent)).toEqual([]);
      const older = readPeftConfig(join(FIXTURES, "qwen2.5-0.5b-instruct-lora-r8/adapter_config.json"));
      expect(older).toMatchObject({ r: 8, lora_alpha: 16, use_qalora: false, lora_bias: false });
      expect(unsupportedSettings(older)).toEqual([]);
    },
  );

  test("ignores keys it does not know and fills PEFT's defaults", () => {
    const c = parse({ future_feature: { x: 1 }, corda_config: null, megatron_core: "megatron.core" });
    expect(c).toMatchObject({ peft_type: "LORA", r: 8, lora_alpha: 8, use_rslora: false, bias: "none" });
  });

  test("reports every wrong field at once", () => {
    const result = v.safeParse(PeftConfigSchema, {
      r: 0,
      lora_alpha: "16",
      use_dora: "no",
      rank_pattern: { q_proj: 2.5 },
    });
    expect(result.success).toBe(false);
    const paths = (result.issues ?? []).map((i) => v.getDotPath(i));
    expect(paths).toEqual(expect.arrayContaining(["r", "lora_alpha", "use_dora", "rank_pattern.q_proj"]));
  });
});

describe("unsupported settings", () => {
  test("each is named; only those that add modules are skippable", () => {
    const found = unsupportedSettings(
      parse({
        peft_type: "IA3",
        use_dora: true,
        fan_in_fan_out: true,
        bias: "all",
        lora_bias: true,
        layer_replication: [[0, 4]],
        use_qalora: true,
        modules_to_save: ["lm_head"],
        target_parameters: ["experts.w1"],
        trainable_token_indices: { embed_tokens: [1, 2] },
      }),
    );
    expect(found.map((u) => [u.what.split(/[ :]/)[0], u.skippable])).toEqual([
      ["peft_type", false],
      ["use_dora", false],
      ["fan_in_fan_out", false],
      ["bias", false],
      ["lora_bias", false],
      ["layer_replication", false],
      ["use_qalora", false],
      ["modules_to_save", true],
      ["target_parameters", true],
      ["trainable_token_indices", true],
    ]);
  });

  test("empty lists and nulls are not features", () => {
    expect(
      unsupportedSettings(
        parse({
          modules_to_save: [],
          target_parameters: null,
          trainable_token_indices: [],
          layer_replication: [],
        }),
      ),
    ).toEqual([]);
  });

  test("a PiSSA or LoftQ initialisation gets a warning", () => {
    expect(configWarnings(parse({ init_lora_weights: "pissa_niter_4" }))[0]).toContain(
      "changes the base model's weights",
    );
    expect(configWarnings(parse({ init_lora_weights: true }))).toEqual([]);
  });
});

describe("rank_pattern and alpha_pattern matching (PEFT's rule: (.*\\.)?(key)$, first key wins)", () => {
  const q1 = "model.layers.1.self_attn.q_proj";
  const q11 = "model.layers.11.self_attn.q_proj";

  test("a bare module name matches that module in every layer", () => {
    expect(matchPattern({ q_proj: 2 }, q1)).toBe(2);
    expect(matchPattern({ q_proj: 2 }, q11)).toBe(2);
  });

  test("a key matches whole dotted segments only", () => {
    expect(matchPattern({ proj: 2 }, q1)).toBeUndefined();
    expect(matchPattern({ q: 2 }, q1)).toBeUndefined();
    expect(matchPattern({ "layers.1.self_attn.q_proj": 2 }, q11)).toBeUndefined();
    expect(matchPattern({ "layers.1.self_attn.q_proj": 2 }, q1)).toBe(2);
  });

  test("keys are regular expressions, and the first matching key in the config's order wins", () => {
    expect(matchPattern({ "layers\\.1\\d\\..*": 3, q_proj: 5 }, q11)).toBe(3);
    expect(matchPattern({ q_proj: 5, "layers\\.1\\d\\..*": 3 }, q11)).toBe(5);
    expect(matchPattern({ "layers\\.1\\d\\..*": 3 }, q1)).toBeUndefined();
  });

  test("an invalid regular expression is a clear error", () => {
    expect(() => matchPattern({ "q_proj(": 2 }, q1)).toThrow(
      /pattern "q_proj\(" is not a valid regular expression/,
    );
  });

  test("scale is alpha / r, or alpha / sqrt(r) with use_rslora, from the matched rank and alpha", () => {
    const c = parse({
      r: 16,
      lora_alpha: 32,
      rank_pattern: { v_proj: 4 },
      alpha_pattern: { "layers.0.self_attn.v_proj": 2 },
    });
    expect(moduleScaling(c, q1)).toEqual({ rank: 16, alpha: 32, scale: 2 });
    expect(moduleScaling(c, "model.layers.0.self_attn.v_proj")).toEqual({ rank: 4, alpha: 2, scale: 0.5 });
    expect(moduleScaling(c, "model.layers.3.self_attn.v_proj")).toEqual({ rank: 4, alpha: 32, scale: 8 });
    const rs = parse({ r: 16, lora_alpha: 32, use_rslora: true });
    expect(moduleScaling(rs, q1).scale).toBe(32 / 4);
  });

  test("layers_to_transform accepts one index or a list", () => {
    expect(layersToTransform(parse({}))).toBeUndefined();
    expect([...(layersToTransform(parse({ layers_to_transform: 3 })) ?? [])]).toEqual([3]);
    expect([...(layersToTransform(parse({ layers_to_transform: [0, 2] })) ?? [])]).toEqual([0, 2]);
  });
});
