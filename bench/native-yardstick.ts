/**
 * The "Benchmark kernels" of ffi/include/multilora.h, opened on their own (the CPU library only: the
 * TensorRT-LLM library does not have them): the yardsticks bench/engine.ts divides by, and the engine's
 * matrix product for the kernel tests. Same library path as src/engine/native.ts (`MULTILORA_LIB`
 * overrides it).
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { cpuKernelPath as nativeCpuKernelPath, nativeLibraryPath } from "../src/engine/native.ts";

const { ptr: P, i32, i64, f64, cstring } = FFIType;

const SYMBOLS = {
  mlr_bench_read_bandwidth: { args: [i32, i64, i32], returns: f64 },
  mlr_bench_peak_flops: { args: [i32, i32], returns: f64 },
  mlr_bench_matmul: { args: [cstring, i32, P, P, P, i32, i64, i64, i64], returns: i32 },
  mlr_bench_lora_expand: { args: [cstring, P, P, P, P, i32, i64, i32, i64], returns: i32 },
} as const;

export type KernelPath = "portable" | "avx2" | "avx512" | "avx512_bf16";
export const KERNEL_PATHS: KernelPath[] = ["portable", "avx2", "avx512", "avx512_bf16"];

let lib: ReturnType<typeof dlopen<typeof SYMBOLS>>["symbols"] | undefined;
function symbols() {
  lib ??= dlopen(nativeLibraryPath(), SYMBOLS).symbols;
  return lib;
}

/** The kernel path a CPU engine created now uses. */
export function cpuKernelPath(): KernelPath {
  return nativeCpuKernelPath() as KernelPath;
}

/** Read bandwidth (bytes/s) over a buffer of `bytes`, best of `rounds`, on `threads` threads. */
export function readBandwidth(threads: number, bytes: number, rounds = 5): number {
  return symbols().mlr_bench_read_bandwidth(threads, BigInt(Math.floor(bytes)), rounds);
}

/** Peak FLOP/s on `threads` threads: f32 FMA on the widest vectors, or vdpbf16ps (0 when absent). */
export function peakFlops(threads: number, kind: "f32" | "bf16"): number {
  return symbols().mlr_bench_peak_flops(threads, kind === "f32" ? 0 : 1);
}

const DTYPE = { F32: 0, F16: 1, BF16: 2 } as const;

/**
 * The engine's matrix product: y[t, o] = x[t, :] . W[o, :], on `path` (undefined: the engine's own).
 * W holds n_out rows of n_in elements (Float32Array for F32, Uint16Array of bits for F16 / BF16).
 * Returns undefined when this CPU cannot run the path.
 */
export function benchMatmul(
  path: KernelPath | undefined,
  threads: number,
  x: Float32Array,
  w: Float32Array | Uint16Array,
  dtype: keyof typeof DTYPE,
  nTokens: number,
  nIn: number,
  nOut: number,
): Float32Array | undefined {
  const y = new Float32Array(nTokens * nOut);
  const status = symbols().mlr_bench_matmul(
    path === undefined ? null : Buffer.from(`${path}\0`),
    threads,
    ptr(y),
    ptr(x),
    ptr(w),
    DTYPE[dtype],
    BigInt(nTokens),
    BigInt(nIn),
    BigInt(nOut),
  );
  if (status === 6) return undefined; // MLR_UNSUPPORTED
  if (status !== 0) throw new Error(`mlr_bench_matmul failed with status ${status}`);
  return y;
}

/**
 * The engine's LoRA expansion, on one thread: y[t, o] + scale[t] * mid[t, :] . Bt[:, o] for t < nTokens,
 * on `path` (undefined: the engine's own). Bt holds rank rows of nOut elements (Float32Array for F32,
 * Uint16Array of bits for F16 / BF16). Returns undefined when this CPU cannot run the path.
 */
export function benchLoraExpand(
  path: KernelPath | undefined,
  y: Float32Array,
  mid: Float32Array,
  scale: Float32Array,
  bt: Float32Array | Uint16Array,
  dtype: keyof typeof DTYPE,
  nTokens: number,
  rank: number,
  nOut: number,
): Float32Array | undefined {
  const out = y.slice();
  const status = symbols().mlr_bench_lora_expand(
    path === undefined ? null : Buffer.from(`${path}\0`),
    ptr(out),
    ptr(mid),
    ptr(scale),
    ptr(bt),
    DTYPE[dtype],
    BigInt(nTokens),
    rank,
    BigInt(nOut),
  );
  if (status === 6) return undefined; // MLR_UNSUPPORTED
  if (status !== 0) throw new Error(`mlr_bench_lora_expand failed with status ${status}`);
  return out;
}
