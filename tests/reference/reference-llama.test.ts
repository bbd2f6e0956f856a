/**
 * The test helpers that stand in for a real model: the random HF checkpoint writer, the llama2.c
 * converter and the float64 reference forward pass. The real aidreams260K model's golden greedy output
 * (fixtures/README.md section 1) proves the converter and the forward pass; the rest checks the pieces
 * the fixture does not exercise (GQA, untied heads, biases, LoRA, llama3 RoPE scaling, stored dtypes).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type LlamaCheckpoint,
  type LlamaModel,
  type LlamaSpec,
  writeLlamaCheckpoint,
} from "../../src/engine/random-checkpoint.ts";
import { bf16ToF32, type FloatDType, f16ToF32 } from "../../src/formats/dtypes.ts";
import { readSafetensors } from "../../src/formats/safetensors-reader.ts";
import { FIXTURES } from "../helpers/fixtures.ts";
import { llama2cToHf, readLlama2c } from "../helpers/llama2c.ts";
import { rng } from "../helpers/peft.ts";
import {
  greedy,
  LORA_MODULES,
  type LoraDelta,
  mergeLora,
  moduleShape,
  referenceLogits,
  ropeInvFreq,
} from "../helpers/reference-llama.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-reference-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
let dirs = 0;
const freshDir = () => join(work, `m${dirs++}`);

const AIDREAMS = join(FIXTURES, "aidreams260K-llama2c/aidreams260K.bin");
const HAVE_AIDREAMS = existsSync(AIDREAMS);
if (!HAVE_AIDREAMS) console.warn(`notice: ${AIDREAMS} is absent; the golden-output test is skipped`);

/** fixtures/README.md section 1: greedy decoding from BOS (token 1) at position 0. */
const GOLDEN = [319, 459, 355, 260, 275, 429, 339, 315, 374, 327, 446, 262, 421, 392, 275, 280];

const TINY: LlamaSpec = {
  hidden: 32,
  intermediate: 48,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  headDim: 8,
  vocab: 40,
};

/** max |a - b| over max |b|, across all positions. */
function relativeDiff(a: Float64Array[], b: Float64Array[]): number {
  let diff = 0;
  let scale = 0;
  expect(a.length).toBe(b.length);
  for (let p = 0; p < a.length; p++) {
    const x = a[p] as Float64Array;
    const y = b[p] as Float64Array;
    expect(x.length).toBe(y.length);
    for (let i = 0; i < x.length; i++) {
      diff = Math.max(diff, Math.abs((x[i] as number) - (y[i] as number)));
      scale = Math.max(scale, Math.abs(y[i] as number));
    }
  }
  return diff / scale;
}

describe("llama2.c checkpoints", () => {
  test.skipIf(!HAVE_AIDREAMS)("aidreams260K converted to HF reproduces the golden greedy ids", () => {
    const header = readLlama2c(AIDREAMS).header;
    expect(header).toEqual({
      dim: 64,
      hiddenDim: 172,
      layers: 4,
      heads: 4,
      kvHeads: 4,
      vocab: 512,
      seqLen: 128,
      sharedClassifier: true,
    });
    const model = llama2cToHf(freshDir(), AIDREAMS);
    expect(model.config.tie_word_embeddings).toBe(true);
    expect(model.weights.has("lm_head.weight")).toBe(false);
    expect(greedy(model, [1], GOLDEN.length)).toEqual(GOLDEN);
  });

  test("an unshared-classifier GQA checkpoint converts back to the HF weights it was exported from", () => {
    const original = writeLlamaCheckpoint(freshDir(), { ...TINY, seed: 7, maxPosition: 16 });
    const bin = join(work, "exported.bin");
    writeLegacyLlama2c(bin, original, 16);
    const converted = llama2cToHf(freshDir(), bin);
    expect(converted.config.tie_word_embeddings).toBe(false);
    expect(converted.config.max_position_embeddings).toBe(16);
    expect([...converted.weights.keys()]).toEqual([...original.weights.keys()]);
    for (const [name, values] of original.weights) expect(converted.weights.get(name)).toEqual(values);
    // The files written, not only the returned values, hold the same tensors.
    const file = readSafetensors(join(converted.dir, "model.safetensors"));
    for (const [name, values] of original.weights) expect(file.view(name)).toEqual(values);
  });
});

/**
 * Writes `model` in llama2.c's legacy format the way export.py does: q/k rows permuted from HF halves
 * back to interleaved pairs (llama2.c row 2j + t is HF row t * headDim/2 + j within each head).
 */
function writeLegacyLlama2c(path: string, model: LlamaCheckpoint, seqLen: number): void {
  const c = model.config;
  const D = c.head_dim;
  const toInterleaved = (w: Float32Array, heads: number): Float32Array => {
    const cols = w.length / (heads * D);
    const out = new Float32Array(w.length);
    for (let h = 0; h < heads; h++) {
      for (let j = 0; j < D / 2; j++) {
        for (const t of [0, 1]) {
          const from = (h * D + t * (D / 2) + j) * cols;
          out.set(w.subarray(from, from + cols), (h * D + 2 * j + t) * cols);
        }
      }
    }
    return out;
  };
  const w = (name: string) => model.weights.get(name) as Float32Array;
  const layers = [...Array(c.num_hidden_layers).keys()];
  const perLayer = (f: (p: string) => Float32Array) => layers.map((l) => f(`model.layers.${l}`));
  const parts: Float32Array[] = [
    w("model.embed_tokens.weight"),
    ...perLayer((p) => w(`${p}.input_layernorm.weight`)),
    ...perLayer((p) => toInterleaved(w(`${p}.self_attn.q_proj.weight`), c.num_attention_heads)),
    ...perLayer((p) => toInterleaved(w(`${p}.self_attn.k_proj.weight`), c.num_key_value_heads)),
    ...perLayer((p) => w(`${p}.self_attn.v_proj.weight`)),
    ...perLayer((p) => w(`${p}.self_attn.o_proj.weight`)),
    ...perLayer((p) => w(`${p}.post_attention_layernorm.weight`)),
    ...perLayer((p) => w(`${p}.mlp.gate_proj.weight`)),
    ...perLayer((p) => w(`${p}.mlp.down_proj.weight`)),
    ...perLayer((p) => w(`${p}.mlp.up_proj.weight`)),
    w("model.norm.weight"),
    new Float32Array(seqLen * D).fill(Number.NaN), // freq_cis_real/imag: must be skipped
    w("lm_head.weight"),
  ];
  const header = new Int32Array([
    c.hidden_size,
    c.intermediate_size,
    c.num_hidden_layers,
    c.num_attention_heads,
    c.num_key_value_heads,
    -c.vocab_size,
    seqLen,
  ]);
  const chunks = [new Uint8Array(header.buffer), ...parts.map((p) => new Uint8Array(p.buffer))];
  writeFileSync(path, Buffer.concat(chunks));
}

describe("writeLlamaCheckpoint", () => {
  test("config.json has the usual HF keys", () => {
    const m = writeLlamaCheckpoint(freshDir(), {
      ...TINY,
      dtype: "BF16",
      ropeTheta: 500000,
      ropeScaling: {
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 64,
      },
      rmsEps: 1e-6,
      maxPosition: 256,
    });
    const config = JSON.parse(readFileSync(join(m.dir, "config.json"), "utf8"));
    expect(config).toMatchObject({
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      hidden_size: 32,
      intermediate_size: 48,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      head_dim: 8,
      vocab_size: 40,
      rms_norm_eps: 1e-6,
      rope_theta: 500000,
      rope_scaling: {
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 64,
        rope_type: "llama3",
      },
      tie_word_embeddings: false,
      max_position_embeddings: 256,
      torch_dtype: "bfloat16",
      bos_token_id: 1,
      eos_token_id: 2,
    });
    expect(config).toEqual(m.config);
    const plain = writeLlamaCheckpoint(freshDir(), { ...TINY, architecture: "MistralForCausalLM" }).config;
    expect(plain).toMatchObject({
      architectures: ["MistralForCausalLM"],
      model_type: "mistral",
      rope_theta: 10000,
      rope_scaling: null,
      rms_norm_eps: 1e-5,
      torch_dtype: "float32",
      sliding_window: null,
    });
  });

  for (const dtype of ["F32", "F16", "BF16"] as FloatDType[]) {
    test(`tensor names, shapes and ${dtype} values round trip through model.safetensors`, () => {
      const m = writeLlamaCheckpoint(freshDir(), { ...TINY, dtype, seed: 3 });
      const file = readSafetensors(join(m.dir, "model.safetensors"));
      const H = 32;
      const expected: Record<string, number[]> = {
        "model.embed_tokens.weight": [40, H],
        "model.norm.weight": [H],
        "lm_head.weight": [40, H],
      };
      for (const l of [0, 1]) {
        const p = `model.layers.${l}`;
        Object.assign(expected, {
          [`${p}.input_layernorm.weight`]: [H],
          [`${p}.self_attn.q_proj.weight`]: [32, H],
          [`${p}.self_attn.k_proj.weight`]: [16, H],
          [`${p}.self_attn.v_proj.weight`]: [16, H],
          [`${p}.self_attn.o_proj.weight`]: [H, 32],
          [`${p}.post_attention_layernorm.weight`]: [H],
          [`${p}.mlp.gate_proj.weight`]: [48, H],
          [`${p}.mlp.up_proj.weight`]: [48, H],
          [`${p}.mlp.down_proj.weight`]: [H, 48],
        });
      }
      expect(file.names.sort()).toEqual(Object.keys(expected).sort());
      expect([...m.weights.keys()].sort()).toEqual(Object.keys(expected).sort());
      for (const [name, shape] of Object.entries(expected)) {
        const info = file.info(name);
        expect(info.dtype).toBe(dtype);
        expect(info.shape).toEqual(shape);
        expect(m.shapes.get(name)).toEqual(shape);
        const stored = file.view(name);
        const decoded =
          dtype === "F32"
            ? (stored as Float32Array)
            : Float32Array.from(stored as Uint16Array, dtype === "F16" ? f16ToF32 : bf16ToF32);
        expect(m.weights.get(name)).toEqual(decoded);
      }
      // Values in the promised ranges (bf16 rounds by up to 2^-8 relative).
      const norm = m.weights.get("model.layers.0.input_layernorm.weight") as Float32Array;
      for (const v of norm) expect(Math.abs(v - 1)).toBeLessThanOrEqual(0.1 + 2 ** -8);
      const q = m.weights.get("model.layers.0.self_attn.q_proj.weight") as Float32Array;
      for (const v of q) expect(Math.abs(v)).toBeLessThanOrEqual((1 + 2 ** -8) / Math.sqrt(H));
    });
  }

  test("tied has no lm_head; qkvBias adds q/k/v biases (Qwen2 by default)", () => {
    const tied = writeLlamaCheckpoint(freshDir(), { ...TINY, tied: true });
    expect(tied.config.tie_word_embeddings).toBe(true);
    expect(readSafetensors(join(tied.dir, "model.safetensors")).names).not.toContain("lm_head.weight");

    const qwen = writeLlamaCheckpoint(freshDir(), { ...TINY, qkvBias: true });
    expect(qwen.config.architectures).toEqual(["Qwen2ForCausalLM"]);
    expect(qwen.config.model_type).toBe("qwen2");
    const file = readSafetensors(join(qwen.dir, "model.safetensors"));
    const biases = file.names.filter((n) => n.endsWith(".bias")).sort();
    expect(biases).toEqual(
      [0, 1].flatMap((l) => ["k", "q", "v"].map((x) => `model.layers.${l}.self_attn.${x}_proj.bias`)),
    );
    expect(file.info("model.layers.0.self_attn.q_proj.bias").shape).toEqual([32]);
    expect(file.info("model.layers.1.self_attn.k_proj.bias").shape).toEqual([16]);
    expect(file.info("model.layers.1.self_attn.v_proj.bias").shape).toEqual([16]);
  });

  test("the same seed gives the same weights; another seed does not", () => {
    const a = writeLlamaCheckpoint(freshDir(), { ...TINY, seed: 5 }).weights;
    const b = writeLlamaCheckpoint(freshDir(), { ...TINY, seed: 5 }).weights;
    const c = writeLlamaCheckpoint(freshDir(), { ...TINY, seed: 6 }).weights;
    expect(b).toEqual(a);
    expect(c.get("lm_head.weight")).not.toEqual(a.get("lm_head.weight"));
  });
});

describe("reference forward pass", () => {
  const TOKENS = [1, 17, 5, 33, 2, 9];

  test("GQA: kv head floor(h / group) serves query head h", () => {
    const gqa = writeLlamaCheckpoint(freshDir(), { ...TINY, seed: 11 });
    // The same model with each kv head duplicated for every query head of its group.
    const weights = new Map<string, Float32Array | Float64Array>(gqa.weights);
    const D = TINY.headDim;
    for (const l of [0, 1]) {
      for (const x of ["k", "v"]) {
        const name = `model.layers.${l}.self_attn.${x}_proj.weight`;
        const w = gqa.weights.get(name) as Float32Array;
        const expanded = new Float32Array(TINY.heads * D * TINY.hidden);
        for (let h = 0; h < TINY.heads; h++) {
          const kv = Math.floor(h / (TINY.heads / TINY.kvHeads));
          expanded.set(w.subarray(kv * D * TINY.hidden, (kv + 1) * D * TINY.hidden), h * D * TINY.hidden);
        }
        weights.set(name, expanded);
      }
    }
    const mha: LlamaModel = { config: { ...gqa.config, num_key_value_heads: TINY.heads }, weights };
    expect(relativeDiff(referenceLogits(gqa, TOKENS), referenceLogits(mha, TOKENS))).toBeLessThan(1e-12);
  });

  test("tied uses embed_tokens as lm_head", () => {
    const tied = writeLlamaCheckpoint(freshDir(), { ...TINY, tied: true, seed: 12 });
    const weights = new Map(tied.weights);
    weights.set("lm_head.weight", tied.weights.get("model.embed_tokens.weight") as Float32Array);
    const untied: LlamaModel = { config: { ...tied.config, tie_word_embeddings: false }, weights };
    expect(relativeDiff(referenceLogits(tied, TOKENS), referenceLogits(untied, TOKENS))).toBe(0);
  });

  test("q/k/v biases change the logits", () => {
    const qwen = writeLlamaCheckpoint(freshDir(), { ...TINY, qkvBias: true, seed: 13 });
    const weights = new Map(qwen.weights);
    for (const name of qwen.weights.keys()) if (name.endsWith(".bias")) weights.delete(name);
    const noBias: LlamaModel = { config: qwen.config, weights };
    expect(relativeDiff(referenceLogits(qwen, TOKENS), referenceLogits(noBias, TOKENS))).toBeGreaterThan(
      1e-3,
    );
  });

  for (const qkvBias of [false, true]) {
    test(`LoRA on all seven modules equals the merged model (qkvBias ${qkvBias})`, () => {
      const model = writeLlamaCheckpoint(freshDir(), { ...TINY, qkvBias, seed: 21 });
      const random = rng(99);
      const lora = new Map<string, LoraDelta>();
      for (const layer of [0, 1]) {
        for (const module of LORA_MODULES) {
          const [out, inDim] = moduleShape(model.config, module);
          const r = layer === 0 ? 4 : 2;
          const a = Float32Array.from({ length: r * inDim }, () => (random() - 0.5) * 0.4);
          const b = Float32Array.from({ length: out * r }, () => (random() - 0.5) * 0.4);
          lora.set(`${layer}/${module}`, { a, b, scale: 2 });
        }
      }
      const base = referenceLogits(model, TOKENS);
      const withLora = referenceLogits(model, TOKENS, { lora });
      const merged = referenceLogits(mergeLora(model, lora), TOKENS);
      expect(relativeDiff(withLora, merged)).toBeLessThan(1e-9);
      // Not vacuous: the adapter moves the logits.
      expect(relativeDiff(withLora, base)).toBeGreaterThan(1e-2);
      // mergeLora copies: the original weights are untouched.
      expect(relativeDiff(referenceLogits(model, TOKENS), base)).toBe(0);
    });
  }

  test("greedy continues from the prompt's last logits", () => {
    const model = writeLlamaCheckpoint(freshDir(), { ...TINY, seed: 31 });
    const ids = greedy(model, [1, 7], 5);
    expect(ids).toHaveLength(5);
    const all = referenceLogits(model, [1, 7, ...ids]);
    for (let i = 0; i < 5; i++) {
      const row = all[i + 1] as Float64Array;
      expect(row.indexOf(Math.max(...row))).toBe(ids[i] as number);
    }
  });

  test("llama3 RoPE scaling: hand-computed inv_freq, and logits change only after position 0", () => {
    const scaling = {
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 64,
    };
    const scaled = writeLlamaCheckpoint(freshDir(), { ...TINY, seed: 41, ropeScaling: scaling });
    // headDim 8, theta 10000: inv_freq = 10000^(-j/4), wavelengths 2 pi * 10000^(j/4) = 6.28, 62.8, 628,
    // 6283. low_freq_wavelen = 64 / 1 = 64, high_freq_wavelen = 64 / 4 = 16. So j=0 is high frequency
    // (kept), j=1 is in between (smoothed), j=2 and j=3 are low frequency (divided by 8).
    const inv = [1, 0.1, 0.01, 0.001];
    const wavelen1 = (2 * Math.PI) / 0.1;
    const smooth = (64 / wavelen1 - 1) / (4 - 1);
    const expected = [1, (1 - smooth) * (0.1 / 8) + smooth * 0.1, 0.01 / 8, 0.001 / 8];
    const got = ropeInvFreq(scaled.config);
    for (let j = 0; j < 4; j++) expect(got[j]).toBeCloseTo(expected[j] as number, 15);
    expect(ropeInvFreq({ ...scaled.config, rope_scaling: null })).toEqual(
      Float64Array.from(inv, (_, j) => 1 / 10000 ** (j / 4)),
    );
    expect(smooth).toBeGreaterThan(0);
    expect(smooth).toBeLessThan(1);

    const plain: LlamaModel = { config: { ...scaled.config, rope_scaling: null }, weights: scaled.weights };
    const a = referenceLogits(scaled, TOKENS);
    const b = referenceLogits(plain, TOKENS);
    expect(a[0]).toEqual(b[0] as Float64Array);
    for (let p = 1; p < TOKENS.length; p++) {
      expect(relativeDiff([a[p] as Float64Array], [b[p] as Float64Array])).toBeGreaterThan(1e-4);
    }
  });
});
