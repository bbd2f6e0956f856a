/**
 * A plain float64 reference forward pass of a Hugging Face Llama-family model (Llama, Mistral without a
 * sliding window, Qwen2 with its q/k/v bias), with optional LoRA deltas. Written for reading, not speed:
 * use it on tiny models only.
 *
 * Semantics follow transformers' modeling_llama.py:
 *   h = embed[token]
 *   per layer: x = rmsnorm(h) * input_layernorm; q, k, v = proj(x) (+ bias) (+ LoRA); RoPE (rotate_half) on
 *   q and k; causal softmax(q.k / sqrt(headDim)) v with GQA; h += o_proj(attn);
 *   x = rmsnorm(h) * post_attention_layernorm; h += down(silu(gate(x)) * up(x))
 *   logits = lm_head(rmsnorm(h) * norm)  (lm_head = embed_tokens when tied)
 */
import type { HfLlamaConfig, LlamaModel } from "../../src/engine/random-checkpoint.ts";

export type LoraModule = "q_proj" | "k_proj" | "v_proj" | "o_proj" | "gate_proj" | "up_proj" | "down_proj";

export const LORA_MODULES: readonly LoraModule[] = [
  "q_proj",
  "k_proj",
  "v_proj",
  "o_proj",
  "gate_proj",
  "up_proj",
  "down_proj",
];

/** One module's low-rank delta: y += scale * B (A x). */
export interface LoraDelta {
  /** [r, in], row-major. */
  a: Float32Array | Float64Array;
  /** [out, r], row-major. */
  b: Float32Array | Float64Array;
  scale: number;
}

/** Deltas keyed by `${layer}/${module}`, e.g. "0/q_proj". */
export type LoraWeights = ReadonlyMap<string, LoraDelta>;

export interface ReferenceOptions {
  lora?: LoraWeights;
}

type Vec = Float64Array;
type Values = Float32Array | Float64Array;

/** The HF weight name of a layer's projection module. */
export function moduleWeightName(layer: number, module: LoraModule): string {
  const block =
    module === "gate_proj" || module === "up_proj" || module === "down_proj" ? "mlp" : "self_attn";
  return `model.layers.${layer}.${block}.${module}.weight`;
}

/** A projection module's [out, in]. */
export function moduleShape(config: HfLlamaConfig, module: LoraModule): [number, number] {
  const H = config.hidden_size;
  const I = config.intermediate_size;
  const q = config.num_attention_heads * config.head_dim;
  const kv = config.num_key_value_heads * config.head_dim;
  const shapes: Record<LoraModule, [number, number]> = {
    q_proj: [q, H],
    k_proj: [kv, H],
    v_proj: [kv, H],
    o_proj: [H, q],
    gate_proj: [I, H],
    up_proj: [I, H],
    down_proj: [H, I],
  };
  return shapes[module];
}

/**
 * RoPE inverse frequencies: inv_freq[j] = 1 / theta^(2j / headDim) for j < headDim/2, then llama3 scaling
 * as transformers' `_compute_llama3_parameters` when `rope_scaling` is set.
 */
export function ropeInvFreq(config: HfLlamaConfig): Float64Array {
  const half = config.head_dim / 2;
  const inv = new Float64Array(half);
  for (let j = 0; j < half; j++) inv[j] = 1 / config.rope_theta ** ((2 * j) / config.head_dim);
  const s = config.rope_scaling;
  if (!s) return inv;
  if (s.rope_type !== "llama3") throw new Error(`rope_type ${s.rope_type} is not supported`);
  const lowFreqWavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const highFreqWavelen = s.original_max_position_embeddings / s.high_freq_factor;
  for (let j = 0; j < half; j++) {
    const f = inv[j] as number;
    const wavelen = (2 * Math.PI) / f;
    if (wavelen > lowFreqWavelen) {
      inv[j] = f / s.factor;
    } else if (wavelen < highFreqWavelen) {
      inv[j] = f;
    } else {
      const smooth =
        (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
        (s.high_freq_factor - s.low_freq_factor);
      inv[j] = ((1 - smooth) * f) / s.factor + smooth * f;
    }
  }
  return inv;
}

/** Logits (one Float64Array of vocab_size per position) for `tokens` at positions 0, 1, ... */
export function referenceLogits(
  model: LlamaModel,
  tokens: readonly number[],
  options: ReferenceOptions = {},
): Float64Array[] {
  const run = new ReferenceRun(model, options);
  return tokens.map((token) => run.step(token));
}

/** Greedy decoding: feeds `promptTokens`, then `n` argmax tokens; returns the `n` generated ids. */
export function greedy(
  model: LlamaModel,
  promptTokens: readonly number[],
  n: number,
  options: ReferenceOptions = {},
): number[] {
  if (promptTokens.length === 0) throw new Error("greedy needs at least one prompt token");
  const run = new ReferenceRun(model, options);
  let logits: Float64Array = new Float64Array(0);
  for (const token of promptTokens) logits = run.step(token);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const next = argmax(logits);
    out.push(next);
    if (i + 1 < n) logits = run.step(next);
  }
  return out;
}

/** Index of the first largest value. */
export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if ((v[i] as number) > (v[best] as number)) best = i;
  return best;
}

/** A copy of `model` whose weights are W + scale * B A (in float64) for every delta in `lora`. */
export function mergeLora(model: LlamaModel, lora: LoraWeights): LlamaModel {
  const weights = new Map<string, Float32Array | Float64Array>(model.weights);
  for (const [key, delta] of lora) {
    const { layer, module } = parseLoraKey(key);
    const name = moduleWeightName(layer, module);
    const [out, inDim] = moduleShape(model.config, module);
    const r = loraRank(delta, out, inDim, key);
    const w = Float64Array.from(weight(model, name));
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inDim; i++) {
        let sum = 0;
        for (let k = 0; k < r; k++)
          sum += (delta.b[o * r + k] as number) * (delta.a[k * inDim + i] as number);
        w[o * inDim + i] = (w[o * inDim + i] as number) + delta.scale * sum;
      }
    }
    weights.set(name, w);
  }
  return { config: model.config, weights };
}

function parseLoraKey(key: string): { layer: number; module: LoraModule } {
  const match = /^(\d+)\/(\w+)$/.exec(key);
  const module = match?.[2] as LoraModule;
  if (!match || !LORA_MODULES.includes(module)) throw new Error(`bad LoRA key "${key}"`);
  return { layer: Number(match[1]), module };
}

function loraRank(delta: LoraDelta, out: number, inDim: number, key: string): number {
  const r = delta.a.length / inDim;
  if (!Number.isInteger(r) || r < 1 || delta.b.length !== out * r) {
    throw new Error(
      `LoRA ${key}: A has ${delta.a.length} values, B ${delta.b.length}, for [${out}, ${inDim}]`,
    );
  }
  return r;
}

function weight(model: LlamaModel, name: string): Values {
  const w = model.weights.get(name);
  if (!w) throw new Error(`the model has no tensor ${name}`);
  return w;
}

/** y = W x for W [rows, cols] row-major. */
function matvec(w: Values, rows: number, cols: number, x: Vec): Vec {
  if (w.length !== rows * cols || x.length !== cols) {
    throw new Error(`matvec: ${w.length} weights for [${rows}, ${cols}], input of ${x.length}`);
  }
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let sum = 0;
    const base = r * cols;
    for (let c = 0; c < cols; c++) sum += (w[base + c] as number) * (x[c] as number);
    y[r] = sum;
  }
  return y;
}

function rmsNorm(x: Vec, w: Values, eps: number): Vec {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * inv * (w[i] as number));
}

const silu = (x: number): number => x / (1 + Math.exp(-x));

/** Rotates each head of `x` in place by HF rotate_half: element j pairs with j + headDim/2. */
function applyRope(x: Vec, heads: number, headDim: number, cos: Vec, sin: Vec): void {
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    const o = h * headDim;
    for (let j = 0; j < half; j++) {
      const x1 = x[o + j] as number;
      const x2 = x[o + j + half] as number;
      const c = cos[j] as number;
      const s = sin[j] as number;
      x[o + j] = x1 * c - x2 * s;
      x[o + j + half] = x2 * c + x1 * s;
    }
  }
}

/** One sequence fed a token at a time, keeping every layer's keys and values. */
class ReferenceRun {
  private readonly keys: Vec[][] = [];
  private readonly values: Vec[][] = [];
  private readonly invFreq: Vec;
  private position = 0;

  constructor(
    private readonly model: LlamaModel,
    private readonly options: ReferenceOptions,
  ) {
    const c = model.config;
    if (c.hidden_act !== undefined && c.hidden_act !== "silu") throw new Error(`hidden_act ${c.hidden_act}`);
    if (c.num_attention_heads % c.num_key_value_heads !== 0) throw new Error("heads % kvHeads != 0");
    for (const key of options.lora?.keys() ?? []) parseLoraKey(key);
    for (let l = 0; l < c.num_hidden_layers; l++) {
      this.keys.push([]);
      this.values.push([]);
    }
    this.invFreq = ropeInvFreq(c);
  }

  /** A projection: W x (+ bias) (+ scale * B (A x)). */
  private project(layer: number, module: LoraModule, x: Vec): Vec {
    const [out, inDim] = moduleShape(this.model.config, module);
    const name = moduleWeightName(layer, module);
    const y = matvec(weight(this.model, name), out, inDim, x);
    const bias = this.model.weights.get(name.replace(/\.weight$/, ".bias"));
    if (bias) for (let i = 0; i < out; i++) y[i] = (y[i] as number) + (bias[i] as number);
    const key = `${layer}/${module}`;
    const delta = this.options.lora?.get(key);
    if (delta) {
      const r = loraRank(delta, out, inDim, key);
      const ax = matvec(delta.a, r, inDim, x);
      const bax = matvec(delta.b, out, r, ax);
      for (let i = 0; i < out; i++) y[i] = (y[i] as number) + delta.scale * (bax[i] as number);
    }
    return y;
  }

  /** Feeds `token` at the next position; returns that position's logits. */
  step(token: number): Vec {
    const c = this.model.config;
    const H = c.hidden_size;
    const D = c.head_dim;
    const heads = c.num_attention_heads;
    const kvHeads = c.num_key_value_heads;
    const group = heads / kvHeads;
    const eps = c.rms_norm_eps;
    const pos = this.position++;
    if (!Number.isInteger(token) || token < 0 || token >= c.vocab_size) throw new Error(`token ${token}`);

    const embed = weight(this.model, "model.embed_tokens.weight");
    const h = Float64Array.from(embed.subarray(token * H, (token + 1) * H));
    const cos = this.invFreq.map((f) => Math.cos(pos * f));
    const sin = this.invFreq.map((f) => Math.sin(pos * f));

    for (let l = 0; l < c.num_hidden_layers; l++) {
      const p = `model.layers.${l}`;
      const x = rmsNorm(h, weight(this.model, `${p}.input_layernorm.weight`), eps);
      const q = this.project(l, "q_proj", x);
      const k = this.project(l, "k_proj", x);
      const v = this.project(l, "v_proj", x);
      applyRope(q, heads, D, cos, sin);
      applyRope(k, kvHeads, D, cos, sin);
      const layerKeys = this.keys[l] as Vec[];
      const layerValues = this.values[l] as Vec[];
      layerKeys.push(k);
      layerValues.push(v);

      const attn = new Float64Array(heads * D);
      const scale = 1 / Math.sqrt(D);
      for (let hd = 0; hd < heads; hd++) {
        const kv = Math.floor(hd / group);
        const scores = new Float64Array(pos + 1);
        for (let t = 0; t <= pos; t++) {
          const kt = layerKeys[t] as Vec;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += (q[hd * D + d] as number) * (kt[kv * D + d] as number);
          scores[t] = dot * scale;
        }
        const max = Math.max(...scores);
        let total = 0;
        for (let t = 0; t <= pos; t++) {
          scores[t] = Math.exp((scores[t] as number) - max);
          total += scores[t] as number;
        }
        for (let t = 0; t <= pos; t++) {
          const vt = layerValues[t] as Vec;
          const weightT = (scores[t] as number) / total;
          for (let d = 0; d < D; d++) {
            attn[hd * D + d] = (attn[hd * D + d] as number) + weightT * (vt[kv * D + d] as number);
          }
        }
      }
      const o = this.project(l, "o_proj", attn);
      for (let i = 0; i < H; i++) h[i] = (h[i] as number) + (o[i] as number);

      const x2 = rmsNorm(h, weight(this.model, `${p}.post_attention_layernorm.weight`), eps);
      const gate = this.project(l, "gate_proj", x2);
      const up = this.project(l, "up_proj", x2);
      const act = gate.map((g, i) => silu(g) * (up[i] as number));
      const down = this.project(l, "down_proj", act);
      for (let i = 0; i < H; i++) h[i] = (h[i] as number) + (down[i] as number);
    }

    const final = rmsNorm(h, weight(this.model, "model.norm.weight"), eps);
    const head = c.tie_word_embeddings ? embed : weight(this.model, "lm_head.weight");
    return matvec(head, c.vocab_size, H, final);
  }
}
