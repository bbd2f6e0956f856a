/**
 * The CPU engine side by side with llama.cpp, in one run, on the same SmolLM2-360M-shaped random BF16
 * weights (the benchmarks' shape, bench/shapes.ts), the same token ids and the same thread count:
 *
 *   prefill    one 512-token prompt (best of two), prompt tokens/s
 *   decode1    one sequence, greedy, tokens/s after its first token
 *   decode16   16 sequences at once, no LoRA, aggregate tokens/s
 *   lora16     16 sequences on 16 distinct rank-16 adapters (all seven modules); llama.cpp cannot batch
 *              different adapters, so it runs one context per adapter, all 16 at once
 *
 * llama.cpp comes from node-llama-cpp (pinned below, its prebuilt linux-x64 CPU binaries only), installed
 * with `npm install --no-save` into a cache folder of its own (.cache/bench-peers/, git-ignored): it is
 * never a project dependency and `npm ci` never pulls it. The weights go to it as a BF16 GGUF written here
 * (q/k rows permuted to GGUF's rotary layout, norms in F32 as llama.cpp's converter writes them), the
 * adapters as GGUF LoRA files. When the peer cannot be installed or loaded, this says why and skips.
 *
 *   bun bench/peers.ts [--threads N] [--tokens N]
 *
 * Last line: {"bench":"peers","threads":N,"ours":{"prefill_tps","decode1_tps","decode16_tps","lora16_tps"},
 * "llamacpp":{same keys},"prefill_ratio","decode1_ratio","decode16_ratio","lora16_ratio"} (ratio = ours /
 * llama.cpp's), or {"bench":"peers","threads":N,"skipped":"why"}.
 */
import { spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { loadCheckpoint } from "../src/engine/checkpoint.ts";
import { CpuEngine } from "../src/engine/cpu-engine.ts";
import type { LoraRef, RequestHandle } from "../src/engine/engine.ts";
import { type LlamaCheckpoint, writeLlamaCheckpoint } from "../src/engine/random-checkpoint.ts";
import { castFloats } from "../src/formats/dtypes.ts";
import { moduleShape } from "../src/formats/lora-modules.ts";
import { flushToDisk, randomAdapter, SEVEN, SMOLLM2_360M } from "./shapes.ts";

const NODE_LLAMA_CPP = "3.22.1";
const ROOT = join(import.meta.dir, "..");
const CACHE = join(ROOT, ".cache/bench-peers", `node-llama-cpp-${NODE_LLAMA_CPP}`);

const { values } = parseArgs({
  options: { threads: { type: "string" }, tokens: { type: "string", default: "48" } },
});
const threads = values.threads ? Number(values.threads) : availableParallelism();
const decodeTokens = Number(values.tokens);
const DIMS = SMOLLM2_360M;
const RANK = 16;
const ADAPTERS = 16;
const PROMPT = Array.from({ length: 8 }, (_, i) => 100 + i);
const LONG = Array.from({ length: 512 }, (_, i) => (i * 7919) % DIMS.vocab);

interface Figures {
  prefill_tps: number;
  decode1_tps: number;
  decode16_tps: number;
  lora16_tps: number;
}

const round = (x: number) => Number(x.toFixed(2));

function skip(why: string): void {
  console.log(`notice: llama.cpp side by side skipped: ${why}`);
  console.log(JSON.stringify({ bench: "peers", threads, skipped: why }));
}

/* ---------------------------------------------------------------------------------------------- */
/* the peer: node-llama-cpp in its own cache folder */

/** Installs node-llama-cpp (linux-x64 CPU binaries only) into CACHE; returns why not, or undefined. */
function installPeer(): string | undefined {
  if (process.platform !== "linux" || process.arch !== "x64")
    return `no prebuilt CPU binaries for ${process.platform}-${process.arch} here`;
  if (
    existsSync(join(CACHE, "node_modules/node-llama-cpp/package.json")) &&
    existsSync(join(CACHE, "node_modules/@node-llama-cpp/linux-x64/package.json"))
  )
    return undefined;
  mkdirSync(CACHE, { recursive: true });
  // Its own package.json: npm installs into the nearest folder that has one, which must be this one.
  writeFileSync(
    join(CACHE, "package.json"),
    JSON.stringify({
      name: "multilora-bench-peers",
      private: true,
      description: "bench/peers.ts; not a project dependency",
    }),
  );
  console.log(`installing node-llama-cpp ${NODE_LLAMA_CPP} into ${CACHE} ...`);
  const npm = spawnSync(
    "npm",
    [
      "install",
      "--prefix",
      CACHE,
      "--no-save",
      "--no-package-lock",
      "--omit=optional",
      "--ignore-scripts",
      "--no-audit",
      "--no-fund",
      `node-llama-cpp@${NODE_LLAMA_CPP}`,
      `@node-llama-cpp/linux-x64@${NODE_LLAMA_CPP}`,
    ],
    {
      cwd: CACHE,
      encoding: "utf8",
      env: { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: "true" },
      timeout: 600_000,
    },
  );
  if (npm.error) return `npm could not run (${npm.error.message})`;
  if (npm.status !== 0)
    return `npm install failed: ${(npm.stderr || npm.stdout).trim().split("\n").slice(-3).join(" ")}`;
  return undefined;
}

/* ---------------------------------------------------------------------------------------------- */
/* GGUF (v3) */

const GGUF = { U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9 } as const;
const GGML = { F32: 0, BF16: 30 } as const;
const ALIGN = 32;

type Meta =
  | [string, "u32" | "f32" | "str" | "bool", number | string | boolean]
  | [string, "strs", string[]]
  | [string, "f32s" | "i32s", number[]];

interface GgufTensor {
  name: string;
  /** ggml order: ne[0] is the row length */
  ne: number[];
  type: number;
  /** the bytes, in row-major order of the HF shape (ne reversed) */
  data: () => Uint8Array;
  bytes: number;
}

class ByteWriter {
  private chunks: Uint8Array[] = [];
  length = 0;
  private push(b: Uint8Array) {
    this.chunks.push(b);
    this.length += b.length;
  }
  u32(x: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, x, true);
    this.push(b);
  }
  i32(x: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setInt32(0, x, true);
    this.push(b);
  }
  u64(x: number) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(x), true);
    this.push(b);
  }
  f32(x: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, x, true);
    this.push(b);
  }
  str(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.push(b);
  }
  raw(b: Uint8Array) {
    this.push(b);
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}

function writeGguf(path: string, meta: Meta[], tensors: GgufTensor[]): void {
  const w = new ByteWriter();
  w.raw(new TextEncoder().encode("GGUF"));
  w.u32(3);
  w.u64(tensors.length);
  w.u64(meta.length);
  for (const [key, kind, value] of meta) {
    w.str(key);
    if (kind === "u32") {
      w.u32(GGUF.U32);
      w.u32(value as number);
    } else if (kind === "f32") {
      w.u32(GGUF.F32);
      w.f32(value as number);
    } else if (kind === "bool") {
      w.u32(GGUF.BOOL);
      w.raw(new Uint8Array([value ? 1 : 0]));
    } else if (kind === "str") {
      w.u32(GGUF.STRING);
      w.str(value as string);
    } else {
      const list = value as (string | number)[];
      w.u32(GGUF.ARRAY);
      w.u32(kind === "strs" ? GGUF.STRING : kind === "f32s" ? GGUF.F32 : GGUF.I32);
      w.u64(list.length);
      for (const v of list) {
        if (kind === "strs") w.str(v as string);
        else if (kind === "f32s") w.f32(v as number);
        else w.i32(v as number);
      }
    }
  }
  let offset = 0;
  for (const t of tensors) {
    w.str(t.name);
    w.u32(t.ne.length);
    for (const d of t.ne) w.u64(d);
    w.u32(t.type);
    w.u64(offset);
    offset += Math.ceil(t.bytes / ALIGN) * ALIGN;
  }
  const fd = openSync(path, "w");
  try {
    const header = w.bytes();
    writeSync(fd, header);
    const pad = (n: number) => {
      if (n % ALIGN) writeSync(fd, new Uint8Array(ALIGN - (n % ALIGN)));
    };
    pad(header.length);
    for (const t of tensors) {
      const data = t.data();
      writeSync(fd, data);
      pad(data.length);
    }
  } finally {
    closeSync(fd);
  }
}

function bf16Bytes(values: Float32Array): Uint8Array {
  const out = new Uint8Array(values.length * 2);
  castFloats({ dtype: "F32", data: values }, 0, values.length, 1, "BF16", out);
  return out;
}

/** HF rotate_half rows -> GGUF's interleaved pairs (convert_hf_to_gguf.py's permute): out row
 * h*D + 2j + t is HF row h*D + t*D/2 + j. `rowLength` values per row. */
function permuteRows(values: Float32Array, heads: number, rowLength: number): Float32Array {
  const D = values.length / rowLength / heads;
  const out = new Float32Array(values.length);
  for (let h = 0; h < heads; h++)
    for (let j = 0; j < D / 2; j++)
      for (const t of [0, 1]) {
        const from = (h * D + t * (D / 2) + j) * rowLength;
        out.set(values.subarray(from, from + rowLength), (h * D + 2 * j + t) * rowLength);
      }
  return out;
}

/** A SentencePiece-style vocabulary of `n` tokens: <unk>, <s>, </s>, the 256 byte tokens, then plain ones. */
function vocab(n: number): Meta[] {
  const tokens: string[] = ["<unk>", "<s>", "</s>"];
  const types: number[] = [2, 3, 3];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(6);
  }
  while (tokens.length < n) {
    tokens.push(`▁t${tokens.length}`);
    types.push(1);
  }
  return [
    ["tokenizer.ggml.model", "str", "llama"],
    ["tokenizer.ggml.tokens", "strs", tokens],
    ["tokenizer.ggml.scores", "f32s", tokens.map((_, i) => -i)],
    ["tokenizer.ggml.token_type", "i32s", types],
    ["tokenizer.ggml.bos_token_id", "u32", 1],
    ["tokenizer.ggml.eos_token_id", "u32", 2],
    ["tokenizer.ggml.unknown_token_id", "u32", 0],
    ["tokenizer.ggml.add_bos_token", "bool", false],
  ];
}

function writeModelGguf(path: string, model: LlamaCheckpoint): void {
  const c = model.config;
  const w = (name: string) => model.weights.get(name) as Float32Array;
  const matrix = (name: string, values: Float32Array, rows: number, cols: number): GgufTensor => ({
    name,
    ne: [cols, rows],
    type: GGML.BF16,
    bytes: rows * cols * 2,
    data: () => bf16Bytes(values),
  });
  const norm = (name: string, values: Float32Array): GgufTensor => ({
    name,
    ne: [values.length],
    type: GGML.F32,
    bytes: values.length * 4,
    data: () => new Uint8Array(values.buffer, values.byteOffset, values.byteLength),
  });
  const H = c.hidden_size;
  const I = c.intermediate_size;
  const q = c.num_attention_heads * c.head_dim;
  const kv = c.num_key_value_heads * c.head_dim;
  const tensors: GgufTensor[] = [
    matrix("token_embd.weight", w("model.embed_tokens.weight"), c.vocab_size, H),
  ];
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    tensors.push(
      norm(`blk.${l}.attn_norm.weight`, w(`${p}.input_layernorm.weight`)),
      matrix(
        `blk.${l}.attn_q.weight`,
        permuteRows(w(`${p}.self_attn.q_proj.weight`), c.num_attention_heads, H),
        q,
        H,
      ),
      matrix(
        `blk.${l}.attn_k.weight`,
        permuteRows(w(`${p}.self_attn.k_proj.weight`), c.num_key_value_heads, H),
        kv,
        H,
      ),
      matrix(`blk.${l}.attn_v.weight`, w(`${p}.self_attn.v_proj.weight`), kv, H),
      matrix(`blk.${l}.attn_output.weight`, w(`${p}.self_attn.o_proj.weight`), H, q),
      norm(`blk.${l}.ffn_norm.weight`, w(`${p}.post_attention_layernorm.weight`)),
      matrix(`blk.${l}.ffn_gate.weight`, w(`${p}.mlp.gate_proj.weight`), I, H),
      matrix(`blk.${l}.ffn_up.weight`, w(`${p}.mlp.up_proj.weight`), I, H),
      matrix(`blk.${l}.ffn_down.weight`, w(`${p}.mlp.down_proj.weight`), H, I),
    );
  }
  tensors.push(norm("output_norm.weight", w("model.norm.weight")));
  if (!c.tie_word_embeddings) tensors.push(matrix("output.weight", w("lm_head.weight"), c.vocab_size, H));
  writeGguf(
    path,
    [
      ["general.architecture", "str", "llama"],
      ["general.name", "str", "multilora-bench-smollm2-360m-shape"],
      ["general.file_type", "u32", 32], // MOSTLY_BF16
      ["general.alignment", "u32", ALIGN],
      ["llama.context_length", "u32", c.max_position_embeddings],
      ["llama.embedding_length", "u32", H],
      ["llama.block_count", "u32", c.num_hidden_layers],
      ["llama.feed_forward_length", "u32", I],
      ["llama.attention.head_count", "u32", c.num_attention_heads],
      ["llama.attention.head_count_kv", "u32", c.num_key_value_heads],
      ["llama.attention.key_length", "u32", c.head_dim],
      ["llama.attention.value_length", "u32", c.head_dim],
      ["llama.rope.dimension_count", "u32", c.head_dim],
      ["llama.rope.freq_base", "f32", c.rope_theta],
      ["llama.attention.layer_norm_rms_epsilon", "f32", c.rms_norm_eps],
      ["llama.vocab_size", "u32", c.vocab_size],
      ...vocab(c.vocab_size),
    ],
    tensors,
  );
}

/** GGUF names of the seven TensorRT-LLM modules randomAdapter writes. */
const GGUF_MODULE = {
  attn_q: "attn_q",
  attn_k: "attn_k",
  attn_v: "attn_v",
  attn_dense: "attn_output",
  mlp_h_to_4h: "ffn_gate",
  mlp_gate: "ffn_up",
  mlp_4h_to_h: "ffn_down",
} as const;

/** The adapter randomAdapter(DIMS, RANK, seed) makes, as a GGUF LoRA (alpha = rank: scale 1, as ours). */
function writeAdapterGguf(path: string, seed: number): void {
  const a = randomAdapter(DIMS, RANK, seed);
  // bf16 bits back to f32 (randomAdapter stores bf16)
  const bits = new Uint16Array(a.weights.buffer, a.weights.byteOffset, a.weights.length / 2);
  const tensors: GgufTensor[] = [];
  let row = 0;
  for (let layer = 0; layer < DIMS.layers; layer++) {
    for (const module of SEVEN) {
      const s = moduleShape(module, DIMS);
      if (!s) continue;
      const at = row * a.rowLength;
      const aBits = bits.slice(at, at + RANK * s.in); // A [rank, in]
      let bBits: Uint16Array = bits.slice(at + RANK * s.in, at + RANK * (s.in + s.out)); // B [out, rank]
      if (module === "attn_q" || module === "attn_k") {
        const heads = module === "attn_q" ? DIMS.heads : DIMS.kvHeads;
        const f = new Float32Array(Uint32Array.from(bBits, (b) => b << 16).buffer);
        bBits = new Uint16Array(bf16Bytes(permuteRows(f, heads, RANK)).buffer);
      }
      const name = `blk.${layer}.${GGUF_MODULE[module as keyof typeof GGUF_MODULE]}.weight`;
      const view = (u: Uint16Array) => () => new Uint8Array(u.buffer, u.byteOffset, u.byteLength);
      tensors.push(
        {
          name: `${name}.lora_a`,
          ne: [s.in, RANK],
          type: GGML.BF16,
          bytes: aBits.byteLength,
          data: view(aBits),
        },
        {
          name: `${name}.lora_b`,
          ne: [RANK, s.out],
          type: GGML.BF16,
          bytes: bBits.byteLength,
          data: view(bBits),
        },
      );
      row++;
    }
  }
  writeGguf(
    path,
    [
      ["general.architecture", "str", "llama"],
      ["general.type", "str", "adapter"],
      ["general.alignment", "u32", ALIGN],
      ["adapter.type", "str", "lora"],
      ["adapter.lora.alpha", "f32", RANK],
    ],
    tensors,
  );
}

/* ---------------------------------------------------------------------------------------------- */
/* ours */

function adapterRef(seed: number): LoraRef {
  const a = randomAdapter(DIMS, RANK, seed);
  return {
    taskId: BigInt(seed),
    weights: { bytes: a.weights, dtype: "BF16", rows: a.rows, rowLength: a.rowLength },
    config: a.config,
  };
}

/** Aggregate tokens/s of a set of token streams, from the first token of any to the last of all. */
async function streamRate(streams: AsyncIterable<unknown>[]): Promise<number> {
  let first = 0;
  let last = 0;
  let tokens = 0;
  await Promise.all(
    streams.map(async (s) => {
      for await (const _ of s) {
        const now = performance.now();
        if (first === 0) first = now;
        else tokens++;
        last = now;
      }
    }),
  );
  return tokens / ((last - first) / 1000);
}

async function* tokensOf(handle: RequestHandle): AsyncGenerator<number> {
  for await (const e of handle.events) if (e.token >= 0) yield e.token;
}

async function measureOurs(dir: string): Promise<Figures> {
  const engine = CpuEngine.create(loadCheckpoint(dir), {
    threads,
    maxBatch: ADAPTERS,
    loraCacheBytes: 2 * 1024 ** 3,
    maxLoraRank: RANK,
    // every figure computes every token, as llama.cpp does here (its prompts clear their history)
    kvCacheReuse: false,
  });
  try {
    const greedy = (prompt: number[], lora?: LoraRef) =>
      tokensOf(engine.enqueue({ prompt, maxNewTokens: decodeTokens, temperature: 0, lora }));
    let best = Number.POSITIVE_INFINITY;
    for (let r = 0; r < 2; r++) {
      const t = performance.now();
      for await (const _ of engine.enqueue({ prompt: LONG, maxNewTokens: 1, temperature: 0 }).events) {
      }
      best = Math.min(best, (performance.now() - t) / 1000);
    }
    const prefill = LONG.length / best;
    await streamRate([greedy(PROMPT)]); // warm-up
    const decode1 = await streamRate([greedy(PROMPT)]);
    const prompts = Array.from({ length: ADAPTERS }, (_, i) => PROMPT.map((p) => p + i));
    const decode16 = await streamRate(prompts.map((p) => greedy(p)));
    const adapters = prompts.map((_, i) => adapterRef(i + 1));
    for (const lora of adapters)
      for await (const _ of engine.enqueue({ prompt: [1], maxNewTokens: 1, lora }).events) {
      }
    const lora16 = await streamRate(
      prompts.map((p, i) => greedy(p, { taskId: (adapters[i] as LoraRef).taskId })),
    );
    return { prefill_tps: prefill, decode1_tps: decode1, decode16_tps: decode16, lora16_tps: lora16 };
  } finally {
    await engine.close();
  }
}

/* ---------------------------------------------------------------------------------------------- */
/* llama.cpp */

// biome-ignore lint/suspicious/noExplicitAny: node-llama-cpp is not a dependency, so its types are not here
type Any = any;

async function measureLlamaCpp(gguf: string, adapterFiles: string[]): Promise<Figures> {
  const { getLlama, LlamaLogLevel } = (await import(
    join(CACHE, "node_modules/node-llama-cpp/dist/index.js")
  )) as Any;
  const llama = await getLlama({
    gpu: false,
    build: "never",
    usePrebuiltBinaries: true,
    skipDownload: true,
    maxThreads: threads,
    logLevel: LlamaLogLevel.error,
    progressLogs: false,
  });
  const model = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 });
  const ctxOptions = { threads: { ideal: threads, min: threads } };
  const greedy = async function* (sequence: Any, prompt: number[]): AsyncGenerator<number> {
    let n = 0;
    for await (const token of sequence.evaluate(prompt, { temperature: 0 })) {
      yield token as number;
      if (++n >= decodeTokens) break;
    }
  };
  try {
    // prefill: one 512-token prompt, best of two
    const long = await model.createContext({
      ...ctxOptions,
      contextSize: 1024,
      batchSize: 512,
      sequences: 1,
    });
    const seq = long.getSequence();
    let best = Number.POSITIVE_INFINITY;
    for (let r = 0; r < 2; r++) {
      await seq.clearHistory();
      const t = performance.now();
      await seq.evaluateWithoutGeneratingNewTokens(LONG);
      best = Math.min(best, (performance.now() - t) / 1000);
    }
    const prefill = LONG.length / best;
    await seq.clearHistory();
    await streamRate([greedy(seq, PROMPT)]); // warm-up
    await seq.clearHistory();
    const decode1 = await streamRate([greedy(seq, PROMPT)]);
    await long.dispose();

    const prompts = Array.from({ length: ADAPTERS }, (_, i) => PROMPT.map((p) => p + i));
    const batch = await model.createContext({
      ...ctxOptions,
      contextSize: 256 * ADAPTERS,
      batchSize: 512,
      sequences: ADAPTERS,
    });
    const seqs = prompts.map(() => batch.getSequence());
    const decode16 = await streamRate(prompts.map((p, i) => greedy(seqs[i], p)));
    await batch.dispose();

    const contexts: Any[] = [];
    for (const file of adapterFiles)
      contexts.push(
        await model.createContext({
          ...ctxOptions,
          contextSize: 256,
          batchSize: 64,
          sequences: 1,
          lora: { adapters: [{ filePath: file, scale: 1 }] },
        }),
      );
    const lora16 = await streamRate(prompts.map((p, i) => greedy(contexts[i].getSequence(), p)));
    for (const c of contexts) await c.dispose();
    return { prefill_tps: prefill, decode1_tps: decode1, decode16_tps: decode16, lora16_tps: lora16 };
  } finally {
    await model.dispose();
    await llama.dispose();
  }
}

/* ---------------------------------------------------------------------------------------------- */

function report(ours: Figures, theirs: Figures): void {
  console.log(
    `SmolLM2-360M-shaped random BF16 model, ${threads} threads; llama.cpp from node-llama-cpp ${NODE_LLAMA_CPP}`,
  );
  console.log("| figure | multilora | llama.cpp | ratio |");
  console.log("|---|---|---|---|");
  const keys = ["prefill_tps", "decode1_tps", "decode16_tps", "lora16_tps"] as const;
  const names = {
    prefill_tps: "prefill, one 512-token prompt (tokens/s)",
    decode1_tps: "decode, batch 1 (tokens/s)",
    decode16_tps: "decode, batch 16, no LoRA (tokens/s)",
    lora16_tps: `decode, 16 requests on 16 distinct rank-${RANK} adapters (llama.cpp: a context per adapter)`,
  };
  for (const k of keys)
    console.log(
      `| ${names[k]} | ${ours[k].toFixed(1)} | ${theirs[k].toFixed(1)} | ${(ours[k] / theirs[k]).toFixed(2)} |`,
    );
  const fig = (f: Figures) => Object.fromEntries(keys.map((k) => [k, round(f[k])]));
  const ratio = (k: (typeof keys)[number]) => Number((ours[k] / theirs[k]).toFixed(3));
  console.log(
    JSON.stringify({
      bench: "peers",
      threads,
      ours: fig(ours),
      llamacpp: fig(theirs),
      prefill_ratio: ratio("prefill_tps"),
      decode1_ratio: ratio("decode1_tps"),
      decode16_ratio: ratio("decode16_tps"),
      lora16_ratio: ratio("lora16_tps"),
    }),
  );
}

const why = installPeer();
if (why) {
  skip(why);
} else {
  const work = mkdtempSync(join(tmpdir(), "multilora-bench-peers-"));
  let result: { ours: Figures; theirs: Figures } | string;
  try {
    const model = writeLlamaCheckpoint(join(work, "hf"), {
      ...DIMS,
      dtype: "BF16",
      tied: true,
      seed: 1,
      maxPosition: 8192,
    });
    const gguf = join(work, "model.gguf");
    writeModelGguf(gguf, model);
    model.weights.clear();
    const adapterFiles = Array.from({ length: ADAPTERS }, (_, i) => {
      const file = join(work, `adapter-${i + 1}.gguf`);
      writeAdapterGguf(file, i + 1);
      return file;
    });
    flushToDisk(work);
    Bun.gc(true); // the generators' garbage, collected now rather than by GC threads during the figures
    const ours = await measureOurs(join(work, "hf"));
    try {
      result = { ours, theirs: await measureLlamaCpp(gguf, adapterFiles) };
    } catch (err) {
      result = `node-llama-cpp ${NODE_LLAMA_CPP} could not run the model: ${(err as Error).message}`;
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  if (typeof result === "string") skip(result);
  else report(result.ours, result.theirs);
}
