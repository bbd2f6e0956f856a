/**
 * Reads Karpathy's llama2.c legacy (version 0) checkpoints and converts them to Hugging Face Llama
 * checkpoints in the layout of tests/helpers/llama-checkpoint.ts.
 *
 * Legacy layout: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
 * seq_len; a negative vocab_size means the classifier is not shared with the embedding), then f32 weights:
 * token_embedding [V, dim], rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim], wv [L, kv_dim, dim],
 * wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim],
 * rms_final [dim], freq_cis_real and freq_cis_imag [seq_len, head_size / 2] each, then wcls [V, dim] when
 * unshared. Every matrix is [out, in] row-major, as run.c's matmul reads it.
 *
 * run.c rotates adjacent pairs (2j, 2j+1) of each head; HF rotates halves (j, j + headDim/2). Both use the
 * frequency theta^(-2j/headDim) for pair j, so permuting the rows of wq and wk within each head (HF row j
 * takes row 2j, HF row j + headDim/2 takes row 2j+1) gives the same attention scores: the inverse of
 * `permute` in llama2.c's export.py and transformers' convert_llama_weights_to_hf.py.
 */
import { readFileSync } from "node:fs";
import {
  type LlamaCheckpoint,
  llamaConfig,
  saveLlamaCheckpoint,
} from "../../src/engine/random-checkpoint.ts";

export interface Llama2cHeader {
  dim: number;
  hiddenDim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  /** Always positive here; `sharedClassifier` carries the sign. */
  vocab: number;
  seqLen: number;
  sharedClassifier: boolean;
}

export interface Llama2cWeights {
  header: Llama2cHeader;
  tokenEmbedding: Float32Array;
  /** One array per layer. */
  rmsAtt: Float32Array[];
  wq: Float32Array[];
  wk: Float32Array[];
  wv: Float32Array[];
  wo: Float32Array[];
  rmsFfn: Float32Array[];
  w1: Float32Array[];
  w2: Float32Array[];
  w3: Float32Array[];
  rmsFinal: Float32Array;
  /** The unshared classifier [V, dim]; null when the embedding is shared. */
  wcls: Float32Array | null;
}

const VERSIONED_MAGIC = 0x616b3432; // "ak42": llama2.c's version 1+ export format

export function readLlama2c(binPath: string): Llama2cWeights {
  const file = readFileSync(binPath);
  if (file.length < 28) throw new Error(`${binPath}: ${file.length} bytes, too short for a llama2.c header`);
  const ints = new DataView(file.buffer, file.byteOffset, 28);
  const int = (i: number) => ints.getInt32(i * 4, true);
  if (int(0) === VERSIONED_MAGIC) throw new Error(`${binPath}: a versioned llama2.c export, not legacy`);
  const header: Llama2cHeader = {
    dim: int(0),
    hiddenDim: int(1),
    layers: int(2),
    heads: int(3),
    kvHeads: int(4),
    vocab: Math.abs(int(5)),
    seqLen: int(6),
    sharedClassifier: int(5) > 0,
  };
  const { dim, hiddenDim, layers, heads, kvHeads, vocab, seqLen } = header;
  if ([dim, hiddenDim, layers, heads, kvHeads, vocab, seqLen].some((n) => n <= 0) || dim % heads !== 0) {
    throw new Error(`${binPath}: implausible header ${JSON.stringify(header)}`);
  }
  const headSize = dim / heads;
  const kvDim = (dim * kvHeads) / heads;

  // Copy so the floats are aligned whatever the Buffer's offset.
  const floats = new Float32Array(new Uint8Array(file.subarray(28)).buffer);
  const expected =
    vocab * dim +
    layers * (2 * dim + 2 * dim * dim + 2 * kvDim * dim + 3 * hiddenDim * dim) +
    dim +
    seqLen * headSize +
    (header.sharedClassifier ? 0 : vocab * dim);
  if (floats.length !== expected || (file.length - 28) % 4 !== 0) {
    throw new Error(`${binPath}: ${file.length - 28} bytes of weights, expected ${expected} float32`);
  }
  let at = 0;
  const take = (n: number): Float32Array => {
    const out = floats.slice(at, at + n);
    at += n;
    return out;
  };
  const perLayer = (n: number): Float32Array[] => Array.from({ length: layers }, () => take(n));
  const tokenEmbedding = take(vocab * dim);
  const rmsAtt = perLayer(dim);
  const wq = perLayer(dim * dim);
  const wk = perLayer(kvDim * dim);
  const wv = perLayer(kvDim * dim);
  const wo = perLayer(dim * dim);
  const rmsFfn = perLayer(dim);
  const w1 = perLayer(hiddenDim * dim);
  const w2 = perLayer(dim * hiddenDim);
  const w3 = perLayer(hiddenDim * dim);
  const rmsFinal = take(dim);
  take(seqLen * headSize); // freq_cis_real and freq_cis_imag, seq_len * head_size / 2 each
  const wcls = header.sharedClassifier ? null : take(vocab * dim);
  return { header, tokenEmbedding, rmsAtt, wq, wk, wv, wo, rmsFfn, w1, w2, w3, rmsFinal, wcls };
}

/**
 * Reorders the rows of a [heads * headDim, cols] matrix from llama2.c's interleaved RoPE pairs to HF's
 * halves: within each head, HF row j < headDim/2 is row 2j, HF row j + headDim/2 is row 2j + 1.
 */
export function interleavedToHalves(w: Float32Array, heads: number, headDim: number): Float32Array {
  const cols = w.length / (heads * headDim);
  const half = headDim / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < half; j++) {
      const base = h * headDim;
      out.set(w.subarray((base + 2 * j) * cols, (base + 2 * j + 1) * cols), (base + j) * cols);
      out.set(w.subarray((base + 2 * j + 1) * cols, (base + 2 * j + 2) * cols), (base + j + half) * cols);
    }
  }
  return out;
}

/** Converts a llama2.c checkpoint to an HF one (F32) in `dir`; returns the values written. */
export function llama2cToHf(dir: string, binPath: string): LlamaCheckpoint {
  const m = readLlama2c(binPath);
  const { dim, hiddenDim, layers, heads, kvHeads, vocab, seqLen, sharedClassifier } = m.header;
  const headDim = dim / heads;
  const config = llamaConfig({
    hidden: dim,
    intermediate: hiddenDim,
    layers,
    heads,
    kvHeads,
    headDim,
    vocab,
    tied: sharedClassifier,
    rmsEps: 1e-5,
    ropeTheta: 10000,
    maxPosition: seqLen,
    architecture: "LlamaForCausalLM",
  });
  const weights = new Map<string, Float32Array>();
  weights.set("model.embed_tokens.weight", m.tokenEmbedding);
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    const at = <T>(list: T[]): T => list[l] as T;
    weights.set(`${p}.input_layernorm.weight`, at(m.rmsAtt));
    weights.set(`${p}.self_attn.q_proj.weight`, interleavedToHalves(at(m.wq), heads, headDim));
    weights.set(`${p}.self_attn.k_proj.weight`, interleavedToHalves(at(m.wk), kvHeads, headDim));
    weights.set(`${p}.self_attn.v_proj.weight`, at(m.wv));
    weights.set(`${p}.self_attn.o_proj.weight`, at(m.wo));
    weights.set(`${p}.post_attention_layernorm.weight`, at(m.rmsFfn));
    weights.set(`${p}.mlp.gate_proj.weight`, at(m.w1));
    weights.set(`${p}.mlp.up_proj.weight`, at(m.w3));
    weights.set(`${p}.mlp.down_proj.weight`, at(m.w2));
  }
  weights.set("model.norm.weight", m.rmsFinal);
  if (m.wcls) weights.set("lm_head.weight", m.wcls);
  return saveLlamaCheckpoint(dir, config, weights, "F32");
}
