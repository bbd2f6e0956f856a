/**
 * The binding of ffi/include/multilora.h, the one C ABI: the native library (build/libmultilora.so, built
 * from ffi/ by `npm ci`), its bun:ffi symbols, and the layout of every ABI struct as TypeScript writes and
 * reads it. The one place that opens the library. `MULTILORA_LIB` overrides its path (e.g. the
 * AddressSanitizer build).
 *
 * Structs cross the boundary as bytes: `StructLayout` computes C's natural-alignment offsets, and a test
 * checks them against the library's own `mlr_layout` (sizeof / offsetof as the compiler laid them out).
 *
 * When the library is absent (a checkout that skipped the build), the converter falls back to TypeScript;
 * `nativeLibraryStatus()` says why it did not load, and the engine refuses to start with that reason.
 */
import { CString, dlopen, FFIType, ptr } from "bun:ffi";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { MultiloraError } from "../errors.ts";
import type { castFloats, FloatDType } from "../formats/dtypes.ts";

/** Mirrors `mlr_float_dtype` in ffi/include/multilora.h (tests/engine/abi-layout.test.ts checks it). */
export const MLR_DTYPE: Record<FloatDType, number> = { F32: 0, F16: 1, BF16: 2 };

const { ptr: P, i32, u64, f32, i64 } = FFIType;

const SYMBOLS = {
  mlr_cast_floats: { args: [P, i32, u64, f32, P, i32], returns: u64 },
  mlr_cpu_params_default: { args: [P], returns: FFIType.void },
  mlr_request_default: { args: [P], returns: FFIType.void },
  mlr_cpu_create: { args: [P, P, P, u64], returns: i32 },
  mlr_trtllm_create: { args: [P, P, P, u64], returns: i32 },
  mlr_destroy: { args: [P], returns: FFIType.void },
  mlr_enqueue: { args: [P, P, P, P, u64], returns: i32 },
  mlr_await_responses: { args: [P, P, i32, i32, P], returns: i32 },
  mlr_cancel: { args: [P, u64], returns: i32 },
  mlr_capabilities_get: { args: [P, P], returns: i32 },
  mlr_lora_pin: { args: [P, u64, i32, P, u64], returns: i32 },
  mlr_lora_release: { args: [P, u64, P, u64], returns: i32 },
  mlr_stats_get: { args: [P, P, P, i32, P], returns: i32 },
  mlr_forward_logits: { args: [P, P, i32, u64, f32, P, P, u64], returns: i32 },
  mlr_layout: { args: [P, P], returns: i64 },
  mlr_enum_name: { args: [P, i32], returns: P },
  mlr_trtllm_error_status: { args: [P], returns: i32 },
  mlr_trtllm_sampling_text: { args: [P, P, u64], returns: i32 },
  mlr_trtllm_logprob_offset: { args: [i64, i64], returns: i64 },
  mlr_cpu_test_fail_allocs: { args: [P, i32], returns: i32 },
  mlr_cpu_test_mask_overlap: { args: [P, i32, P, P], returns: i32 },
  mlr_vocab_create: { args: [P, P, i32, P, P, P, u64], returns: i32 },
  mlr_vocab_release: { args: [P], returns: FFIType.void },
  mlr_vocab_size: { args: [P], returns: i32 },
  mlr_grammar_create: { args: [P, P, i64, P, P, u64], returns: i32 },
  mlr_grammar_release: { args: [P], returns: FFIType.void },
  mlr_grammar_bytes: { args: [P], returns: i64 },
  mlr_matcher_create: { args: [P, P, P, u64], returns: i32 },
  mlr_matcher_clone: { args: [P, P, P, u64], returns: i32 },
  mlr_matcher_free: { args: [P], returns: FFIType.void },
  mlr_matcher_fill_mask: { args: [P, P, i32, P], returns: i32 },
  mlr_matcher_accept: { args: [P, i32], returns: i32 },
  mlr_matcher_state: { args: [P], returns: i32 },
} as const;

type Library = ReturnType<typeof dlopen<typeof SYMBOLS>>;
/** The ABI's functions, as either library (CPU engine or TensorRT-LLM shim) exports them. */
export type NativeSymbols = Library["symbols"];

/** The CPU engine's library (`MULTILORA_LIB` overrides). */
export function nativeLibraryPath(): string {
  return process.env.MULTILORA_LIB ?? fileURLToPath(new URL("../../build/libmultilora.so", import.meta.url));
}

/** The TensorRT-LLM shim's library (`MULTILORA_TRTLLM_LIB` overrides; built by CMake, ffi/trtllm). */
export function trtllmLibraryPath(): string {
  return (
    process.env.MULTILORA_TRTLLM_LIB ??
    fileURLToPath(new URL("../../build/libmultilora-trtllm.so", import.meta.url))
  );
}

const loaded = new Map<string, { lib: Library } | { error: string }>();

function load(path: string): { lib: Library } | { error: string } {
  let l = loaded.get(path);
  if (!l) {
    try {
      if (!existsSync(path))
        throw new Error(`${path} does not exist (build it with \`make -C ffi\` or \`npm ci\`)`);
      l = { lib: dlopen(path, SYMBOLS) };
    } catch (e) {
      l = { error: (e as Error).message };
    }
    loaded.set(path, l);
  }
  return l;
}

/** A library's symbols (the CPU engine's by default); throws a clear error when it cannot be loaded. */
export function nativeSymbols(path: string = nativeLibraryPath()): NativeSymbols {
  const l = load(path);
  if (!("lib" in l)) {
    throw new MultiloraError(`the native engine library cannot be loaded: ${l.error}`, {
      code: "native_library_missing",
    });
  }
  return l.lib.symbols;
}

/** "loaded from <path>", or why the library could not be loaded. */
export function nativeLibraryStatus(): string {
  const l = load(nativeLibraryPath());
  return "lib" in l ? `loaded from ${nativeLibraryPath()}` : l.error;
}

export type CastFloats = typeof castFloats;

/**
 * The native `mlr_cast_floats` with the signature of `castFloats` in src/formats/dtypes.ts (which it
 * must match bit for bit), or undefined when the library is not available. F64 sources are not handled
 * natively; the returned function reports that by returning -1.
 */
export function nativeCastFloats(): CastFloats | undefined {
  const l = load(nativeLibraryPath());
  if (!("lib" in l)) return undefined;
  const cast = l.lib.symbols.mlr_cast_floats;
  return (src, from, count, scale, dtype, out) => {
    if (src.dtype === "F64") return -1;
    if (count === 0) return 0;
    const data = src.data;
    const srcPtr = ptr(data, from * data.BYTES_PER_ELEMENT);
    return Number(cast(srcPtr, MLR_DTYPE[src.dtype], count, scale, ptr(out), MLR_DTYPE[dtype]));
  };
}

// ---------------------------------------------------------------------------------------------------
// Status codes and enums (stable values of multilora.h; tests/engine/abi-layout.test.ts checks every value
// against the library's mlr_enum_name)

export const MLR_STATUS = {
  OK: 0,
  INVALID_ARGUMENT: 1,
  LORA_NOT_CACHED: 2,
  LORA_CACHE_FULL: 3,
  LORA_INVALID: 4,
  CANCELLED: 5,
  UNSUPPORTED: 6,
  INTERNAL: 7,
  OUT_OF_MEMORY: 8,
  NOT_FOUND: 9,
} as const;

/** The name of a failure status (an unknown code, or OK where a failure was expected, reads as INTERNAL). */
export function statusName(code: number): Exclude<keyof typeof MLR_STATUS, "OK"> {
  const entry = Object.entries(MLR_STATUS).find(([name, v]) => v === code && name !== "OK");
  return (entry?.[0] as Exclude<keyof typeof MLR_STATUS, "OK"> | undefined) ?? "INTERNAL";
}

export const MLR_FINISH = {
  NONE: 0,
  LENGTH: 1,
  END_ID: 2,
  STOP_ID: 3,
  CANCELLED: 4,
  ERROR: 5,
  CONSTRAINT: 6,
} as const;

export const MLR_MAX_TOP_LOGPROBS = 20;

// ---------------------------------------------------------------------------------------------------
// Struct layouts

type Scalar = "i32" | "u32" | "f32" | "i64" | "u64" | "ptr";
type FieldType = Scalar | StructLayout | { array: Scalar | "char"; length: number };

const SCALAR_SIZE: Record<Scalar | "char", number> = {
  i32: 4,
  u32: 4,
  f32: 4,
  i64: 8,
  u64: 8,
  ptr: 8,
  char: 1,
};

/** A C struct laid out with natural alignment, as the C compiler on x86-64 / arm64 does. */
export class StructLayout {
  readonly offsets = new Map<string, number>();
  readonly types = new Map<string, FieldType>();
  readonly size: number;
  readonly align: number;

  constructor(
    readonly name: string,
    fields: readonly [string, FieldType][],
  ) {
    let offset = 0;
    let align = 1;
    for (const [field, type] of fields) {
      const a = alignOf(type);
      offset = Math.ceil(offset / a) * a;
      this.offsets.set(field, offset);
      this.types.set(field, type);
      offset += sizeOf(type);
      align = Math.max(align, a);
    }
    this.align = align;
    this.size = Math.ceil(offset / align) * align;
  }

  offset(field: string): number {
    const o = this.offsets.get(field);
    if (o === undefined) throw new Error(`${this.name} has no field ${field}`);
    return o;
  }
}

function alignOf(t: FieldType): number {
  if (t instanceof StructLayout) return t.align;
  if (typeof t === "object") return SCALAR_SIZE[t.array];
  return SCALAR_SIZE[t];
}

function sizeOf(t: FieldType): number {
  if (t instanceof StructLayout) return t.size;
  if (typeof t === "object") return SCALAR_SIZE[t.array] * t.length;
  return SCALAR_SIZE[t];
}

export const TENSOR = new StructLayout("mlr_tensor", [
  ["name", "ptr"],
  ["data", "ptr"],
  ["dtype", "i32"],
  ["ndim", "i32"],
  ["shape", { array: "i64", length: 2 }],
]);

export const MODEL_CONFIG = new StructLayout("mlr_model_config", [
  ["hidden_size", "i32"],
  ["intermediate_size", "i32"],
  ["num_layers", "i32"],
  ["num_heads", "i32"],
  ["num_kv_heads", "i32"],
  ["head_dim", "i32"],
  ["vocab_size", "i32"],
  ["max_position", "i32"],
  ["rms_norm_eps", "f32"],
  ["rope_theta", "f32"],
  ["rope_scaling", "i32"],
  ["rope_factor", "f32"],
  ["rope_low_freq_factor", "f32"],
  ["rope_high_freq_factor", "f32"],
  ["rope_original_max_position", "i32"],
  ["tie_word_embeddings", "i32"],
  ["attention_bias", "i32"],
]);

export const CPU_PARAMS = new StructLayout("mlr_cpu_params", [
  ["model", MODEL_CONFIG],
  ["tensors", "ptr"],
  ["n_tensors", "i32"],
  ["max_batch", "i32"],
  ["max_seq_len", "i32"],
  ["kv_cache_bytes", "i64"],
  ["threads", "i32"],
  ["prefill_chunk", "i32"],
  ["max_lora_rank", "i32"],
  ["lora_cache_bytes", "i64"],
  ["max_loras", "i32"],
  ["lora_dtype", "i32"],
  ["kv_cache_reuse", "i32"],
  ["kv_block_tokens", "i32"],
  ["copy_weights", "i32"],
]);

/** Mirrors `mlr_trtllm_params` (negative numbers: TensorRT-LLM's own default). */
export const TRTLLM_PARAMS = new StructLayout("mlr_trtllm_params", [
  ["engine_dir", "ptr"],
  ["engine_dtype", "i32"],
  ["max_lora_rank", "i32"],
  ["num_layers", "i32"],
  ["num_lora_modules", "i32"],
  ["world_size", "i32"],
  ["max_batch_size", "i32"],
  ["max_num_tokens", "i32"],
  ["gather_generation_logits", "i32"],
  ["kv_cache_free_gpu_mem_fraction", "f32"],
  ["kv_cache_reuse", "i32"],
  ["lora_host_cache_bytes", "i64"],
  ["lora_device_cache_percent", "f32"],
  ["lora_optimal_adapter_size", "i32"],
  ["lora_max_adapter_size", "i32"],
  ["max_loras", "i32"],
  ["worker_path", "ptr"],
]);

export const REQUEST = new StructLayout("mlr_request", [
  ["prompt", "ptr"],
  ["prompt_len", "i32"],
  ["max_new_tokens", "i32"],
  ["temperature", "f32"],
  ["top_k", "i32"],
  ["top_p", "f32"],
  ["min_p", "f32"],
  ["repetition_penalty", "f32"],
  ["frequency_penalty", "f32"],
  ["presence_penalty", "f32"],
  ["seed", "u64"],
  ["end_ids", "ptr"],
  ["n_end_ids", "i32"],
  ["stop_ids", "ptr"],
  ["n_stop_ids", "i32"],
  ["top_logprobs", "i32"],
  ["lora_task_id", "u64"],
  ["lora_weights", "ptr"],
  ["lora_weights_dtype", "i32"],
  ["lora_rows", "i64"],
  ["lora_row_len", "i64"],
  ["lora_config", "ptr"],
  ["lora_config_width", "i32"],
  ["lora_scale", "f32"],
  ["constraint", "ptr"],
  ["logit_bias_ids", "ptr"],
  ["logit_bias_values", "ptr"],
  ["n_logit_bias", "i32"],
]);

export const RESPONSE = new StructLayout("mlr_response", [
  ["request_id", "u64"],
  ["status", "i32"],
  ["finish_reason", "i32"],
  ["token", "i32"],
  ["has_logprob", "i32"],
  ["logprob", "f32"],
  ["n_top", "i32"],
  ["top_ids", { array: "i32", length: MLR_MAX_TOP_LOGPROBS }],
  ["top_logprobs", { array: "f32", length: MLR_MAX_TOP_LOGPROBS }],
  ["error", { array: "char", length: 256 }],
]);

export const CAPABILITIES = new StructLayout("mlr_capabilities", [
  ["lora_pin", "i32"],
  ["lora_release", "i32"],
  ["lora_task_listing", "i32"],
  ["top_logprobs", "i32"],
  ["lora_scale", "i32"],
  ["max_top_logprobs", "i32"],
  ["max_lora_rank", "i32"],
  ["lora_dtype", "i32"],
  ["raw_logprobs", "i32"],
  ["constraints", "i32"],
  ["logit_bias", "i32"],
]);

export const STATS = new StructLayout("mlr_stats", [
  ["running", "i32"],
  ["queued", "i32"],
  ["kv_bytes_used", "i64"],
  ["kv_bytes_capacity", "i64"],
  ["lora_bytes_used", "i64"],
  ["lora_bytes_capacity", "i64"],
  ["lora_tasks", "i32"],
  ["max_loras", "i32"],
  ["lora_puts", "i64"],
  ["lora_hits", "i64"],
  ["lora_misses", "i64"],
  ["lora_evictions", "i64"],
  ["steps", "i64"],
  ["tokens_generated", "i64"],
  ["prefix_query_tokens", "i64"],
  ["prefix_hit_tokens", "i64"],
  ["prefix_reused_blocks", "i64"],
  ["prefix_blocks", "i64"],
  ["prefix_bytes", "i64"],
]);

export const LORA_TASK_STATS = new StructLayout("mlr_lora_task_stats", [
  ["task_id", "u64"],
  ["bytes", "i64"],
  ["active", "i32"],
  ["pinned", "i32"],
  ["release_pending", "i32"],
  ["rows", "i32"],
  ["last_use", "i64"],
]);

export const ABI_STRUCTS: readonly StructLayout[] = [
  TENSOR,
  MODEL_CONFIG,
  CPU_PARAMS,
  TRTLLM_PARAMS,
  REQUEST,
  RESPONSE,
  CAPABILITIES,
  STATS,
  LORA_TASK_STATS,
];

/** Reads and writes one struct's fields in a byte buffer (little-endian, as every supported target). */
export class StructView {
  readonly view: DataView;

  constructor(
    readonly layout: StructLayout,
    readonly bytes: Uint8Array = new Uint8Array(layout.size),
    readonly base = 0,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  set(field: string, value: number | bigint): this {
    const at = this.base + this.layout.offset(field);
    switch (this.layout.types.get(field)) {
      case "i32":
        this.view.setInt32(at, Number(value), true);
        break;
      case "u32":
        this.view.setUint32(at, Number(value), true);
        break;
      case "f32":
        this.view.setFloat32(at, Number(value), true);
        break;
      case "i64":
        this.view.setBigInt64(at, BigInt(value), true);
        break;
      case "u64":
      case "ptr":
        this.view.setBigUint64(at, BigInt(value), true);
        break;
      default:
        throw new Error(`${this.layout.name}.${field} is not a scalar`);
    }
    return this;
  }

  get(field: string): number {
    const at = this.base + this.layout.offset(field);
    switch (this.layout.types.get(field)) {
      case "i32":
        return this.view.getInt32(at, true);
      case "u32":
        return this.view.getUint32(at, true);
      case "f32":
        return this.view.getFloat32(at, true);
      case "i64":
        return Number(this.view.getBigInt64(at, true));
      case "u64":
      case "ptr":
        return Number(this.view.getBigUint64(at, true));
      default:
        throw new Error(`${this.layout.name}.${field} is not a scalar`);
    }
  }

  /** The same bytes, viewed from `base` (element i of an array of these structs: base = i * size). */
  at(base: number): StructView {
    const view = Object.create(StructView.prototype) as { -readonly [K in keyof StructView]: StructView[K] };
    view.layout = this.layout;
    view.bytes = this.bytes;
    view.base = base;
    view.view = this.view;
    return view as StructView;
  }

  /** A nested struct field. */
  sub(field: string): StructView {
    const t = this.layout.types.get(field);
    if (!(t instanceof StructLayout)) throw new Error(`${this.layout.name}.${field} is not a struct`);
    return new StructView(t, this.bytes, this.base + this.layout.offset(field));
  }

  /** Element i of an array field. */
  element(field: string, i: number): number {
    const t = this.layout.types.get(field);
    if (typeof t !== "object" || t instanceof StructLayout)
      throw new Error(`${this.layout.name}.${field} is not an array`);
    const at = this.base + this.layout.offset(field) + i * SCALAR_SIZE[t.array];
    if (t.array === "i32") return this.view.getInt32(at, true);
    if (t.array === "f32") return this.view.getFloat32(at, true);
    return this.view.getUint8(at);
  }

  /** A NUL-terminated char array field as a string. */
  text(field: string): string {
    const t = this.layout.types.get(field);
    if (typeof t !== "object" || t instanceof StructLayout)
      throw new Error(`${this.layout.name}.${field} is not an array`);
    const start = this.base + this.layout.offset(field);
    const chars = this.bytes.subarray(start, start + t.length);
    const end = chars.indexOf(0);
    return new TextDecoder().decode(end < 0 ? chars : chars.subarray(0, end));
  }
}

let kernelPath: string | undefined;

/**
 * The CPU engine's kernel path on this CPU: "avx512_bf16", "avx512", "avx2" or "portable"
 * (ffi/cpu/kernels.h; `MULTILORA_CPU_KERNELS` picks one). A symbol of the CPU library only, so it is
 * looked up apart from the symbols both libraries have.
 */
export function cpuKernelPath(): string {
  if (kernelPath === undefined) {
    nativeSymbols(); // a clear error when the library cannot be loaded
    const lib = dlopen(nativeLibraryPath(), { mlr_cpu_kernel_path: { args: [], returns: P } });
    const p = lib.symbols.mlr_cpu_kernel_path();
    kernelPath = p ? new CString(p).toString() : "portable";
    lib.close();
  }
  return kernelPath;
}

/**
 * The library's name for a value of one of its enums (`mlr_status`, `mlr_finish`, `mlr_float_dtype`,
 * `mlr_lora_module`), e.g. "MLR_LORA_NOT_CACHED"; undefined when the value is not one of the enum's.
 */
export function nativeEnumName(enumName: string, value: number): string | undefined {
  const lib = nativeSymbols();
  const name = new TextEncoder().encode(`${enumName}\0`);
  const p = lib.mlr_enum_name(ptr(name), value);
  return p ? new CString(p).toString() : undefined;
}

/** The library's own sizeof / offsetof (-1 when it does not know the name). */
export function nativeLayout(structName: string, field?: string): number {
  const lib = nativeSymbols();
  const name = new TextEncoder().encode(`${structName}\0`);
  const f = field === undefined ? null : new TextEncoder().encode(`${field}\0`);
  return Number(lib.mlr_layout(ptr(name), f ? ptr(f) : null));
}

/** A caller-owned buffer for C error text, and its reading. */
export class ErrorBuffer {
  readonly bytes = new Uint8Array(2048);

  get ptr() {
    return ptr(this.bytes);
  }

  get text(): string {
    const end = this.bytes.indexOf(0);
    return new TextDecoder().decode(this.bytes.subarray(0, end < 0 ? this.bytes.length : end));
  }
}
