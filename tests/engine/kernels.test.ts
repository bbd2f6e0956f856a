/**
 * The CPU engine's matrix product and LoRA expansion on every kernel path this CPU runs (mlr_bench_matmul,
 * mlr_bench_lora_expand): against a float64 product of the very values stored, and batch invariance bit for
 * bit (a token's outputs are the same alone, in any batch, at any position of a tile, on any thread count).
 *
 * Tolerance, max |y - reference| over max |reference| (ffi/cpu/kernels.h lists the paths):
 *   portable, avx2, avx512 (f32 arithmetic, any weight dtype)   1e-5 (avx512's BF16: the panels of gemm_panels.c)
 *   avx512_bf16 with BF16 weights (activations rounded to bf16)  5e-3 (measured 1.4e-3 at n_in 960)
 *   avx512_bf16 with F32 / F16 weights (the avx512 f32 kernels)   1e-5
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import {
  benchLoraExpand,
  benchMatmul,
  cpuKernelPath,
  KERNEL_PATHS,
  type KernelPath,
  peakFlops,
  readBandwidth,
} from "../../bench/native-yardstick.ts";
import { rng } from "../../src/engine/random-checkpoint.ts";
import { castFloats, type FloatDType, f32BitsFromF16, f32FromBits } from "../../src/formats/dtypes.ts";

const DTYPES: FloatDType[] = ["F32", "F16", "BF16"];

/** The tolerance of a path and weight dtype (this file's header). */
export function kernelTolerance(path: KernelPath, dtype: FloatDType): number {
  return path === "avx512_bf16" && dtype === "BF16" ? 5e-3 : 1e-5;
}

function weights(
  dtype: FloatDType,
  values: Float32Array,
): { stored: Float32Array | Uint16Array; exact: Float64Array } {
  if (dtype === "F32") return { stored: values, exact: Float64Array.from(values) };
  const bits = new Uint16Array(values.length);
  castFloats({ dtype: "F32", data: values }, 0, values.length, 1, dtype, new Uint8Array(bits.buffer));
  const exact = Float64Array.from(bits, (b) => f32FromBits(dtype === "BF16" ? b << 16 : f32BitsFromF16(b)));
  return { stored: bits, exact };
}

function problem(seed: number, nTokens: number, nIn: number, nOut: number, dtype: FloatDType) {
  const random = rng(seed);
  const x = Float32Array.from({ length: nTokens * nIn }, () => random() * 2 - 1);
  const w = weights(
    dtype,
    Float32Array.from({ length: nOut * nIn }, () => random() - 0.5),
  );
  const reference = new Float64Array(nTokens * nOut);
  for (let t = 0; t < nTokens; t++)
    for (let o = 0; o < nOut; o++) {
      let s = 0;
      for (let k = 0; k < nIn; k++) s += (x[t * nIn + k] as number) * (w.exact[o * nIn + k] as number);
      reference[t * nOut + o] = s;
    }
  return { x, w: w.stored, reference };
}

function relative(got: Float32Array, want: Float64Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    diff = Math.max(diff, Math.abs((got[i] as number) - (want[i] as number)));
    scale = Math.max(scale, Math.abs(want[i] as number));
  }
  return diff / scale;
}

const supported = KERNEL_PATHS.filter(
  (p) => benchMatmul(p, 1, new Float32Array(1), new Float32Array(1), "F32", 1, 1, 1) !== undefined,
);

/** Intel's vdpbf16ps is slower than two f32 FMAs: there the engine takes avx512 (ffi/cpu/kernels.h). */
function amdCpu(): boolean {
  try {
    return readFileSync("/proc/cpuinfo", "utf8").includes("AuthenticAMD");
  } catch {
    return false;
  }
}

describe("the matrix kernels", () => {
  test("the engine's path is the widest this CPU runs (avx512 rather than avx512_bf16 on Intel), and the portable one always runs", () => {
    expect(supported).toContain("portable");
    const widest = supported.at(-1) as KernelPath;
    const picked = process.env.MULTILORA_CPU_KERNELS as KernelPath | undefined;
    if (picked && KERNEL_PATHS.includes(picked)) {
      // the path the variable picks, or the widest below it that this CPU runs
      const at = Math.min(KERNEL_PATHS.indexOf(picked), KERNEL_PATHS.indexOf(widest));
      expect(cpuKernelPath()).toBe(KERNEL_PATHS[at] as KernelPath);
    } else {
      expect(cpuKernelPath()).toBe(widest === "avx512_bf16" && !amdCpu() ? "avx512" : widest);
    }
  });

  // Sizes off every vector width and tile: k tails (173, odd), row tails (45), token tails (37 = 3 x 12 + 1
  // for the panels, 9 x 4 + 1 for the row tiles).
  const shapes: [number, number, number][] = [
    [37, 173, 45],
    [6, 64, 32],
    [1, 960, 48],
  ];
  // Batches over 16 tokens run the rows in blocks (gemm.c: 16 rows of 2048 BF16; gemm_panels.c: 4 panels),
  // every token tile over a block: 160 rows are several blocks, 26 tokens two tile shapes (12 + 12 + 2).
  const blocked: [number, number, number][] = [[26, 2048, 160]];
  const cases = [
    ...DTYPES.map((dtype) => ({ dtype, shapes, what: "" })),
    ...(["F32", "BF16"] as const).map((dtype) => ({
      dtype,
      shapes: blocked,
      what: " over several row blocks",
    })),
  ];
  for (const path of supported) {
    // the portable path has no tiles, hence no blocks
    for (const { dtype, shapes, what } of cases.filter((c) => path !== "portable" || c.shapes !== blocked)) {
      test(`${path}, ${dtype} weights${what}: within ${kernelTolerance(path, dtype)} of float64, and every token the same alone as in any batch`, () => {
        for (const [nTokens, nIn, nOut] of shapes) {
          const { x, w, reference } = problem(nTokens * 7 + nIn, nTokens, nIn, nOut, dtype);
          const all = benchMatmul(path, 2, x, w, dtype, nTokens, nIn, nOut) as Float32Array;
          expect(relative(all, reference)).toBeLessThan(kernelTolerance(path, dtype));
          // every token alone, on one thread
          for (let t = 0; t < nTokens; t++) {
            const alone = benchMatmul(path, 1, x.subarray(t * nIn, (t + 1) * nIn), w, dtype, 1, nIn, nOut);
            expect(alone).toEqual(all.subarray(t * nOut, (t + 1) * nOut));
          }
          // sub-batches at other tile offsets and sizes
          for (const [from, count] of [
            [1, 2],
            [2, 3],
            [3, 5],
          ] as const) {
            if (from + count > nTokens) continue;
            const part = benchMatmul(
              path,
              2,
              x.subarray(from * nIn, (from + count) * nIn),
              w,
              dtype,
              count,
              nIn,
              nOut,
            );
            expect(part).toEqual(all.subarray(from * nOut, (from + count) * nOut));
          }
        }
      });
    }
  }

  // The expansion's tiles: 8 / 4 / 2 / 1 tokens x as many 16-lane vectors as make eight chains (gemm.c):
  // 11 tokens = 8 + 2 + 1, output tails off every vector width (300, 37, 5), ranks 2 to 64.
  const expansions: [number, number, number][] = [
    [11, 16, 300],
    [1, 16, 960],
    [9, 2, 37],
    [3, 64, 5],
  ];
  for (const path of supported) {
    for (const dtype of DTYPES) {
      test(`${path}, ${dtype} LoRA expansion: within 1e-5 of float64, and every token the same alone as in any batch`, () => {
        for (const [nTokens, rank, nOut] of expansions) {
          const random = rng(nTokens * 31 + rank * 7 + nOut);
          const y = Float32Array.from({ length: nTokens * nOut }, () => random() * 2 - 1);
          const mid = Float32Array.from({ length: nTokens * rank }, () => random() * 2 - 1);
          const scale = Float32Array.from({ length: nTokens }, () => 0.25 + random());
          const bt = weights(
            dtype,
            Float32Array.from({ length: rank * nOut }, () => random() - 0.5),
          );
          const reference = new Float64Array(nTokens * nOut);
          for (let t = 0; t < nTokens; t++)
            for (let o = 0; o < nOut; o++) {
              let s = 0;
              for (let r = 0; r < rank; r++)
                s += (mid[t * rank + r] as number) * (bt.exact[r * nOut + o] as number);
              reference[t * nOut + o] = (y[t * nOut + o] as number) + (scale[t] as number) * s;
            }
          const all = benchLoraExpand(
            path,
            y,
            mid,
            scale,
            bt.stored,
            dtype,
            nTokens,
            rank,
            nOut,
          ) as Float32Array;
          expect(relative(all, reference)).toBeLessThan(1e-5);
          for (const [from, count] of [
            [0, 1],
            [1, 2],
            [2, 3],
            [3, 5],
            [nTokens - 1, 1],
          ] as const) {
            if (from + count > nTokens) continue;
            const rows = (a: Float32Array, n: number) => a.subarray(from * n, (from + count) * n);
            const part = benchLoraExpand(
              path,
              rows(y, nOut),
              rows(mid, rank),
              scale.subarray(from, from + count),
              bt.stored,
              dtype,
              count,
              rank,
              nOut,
            );
            expect(part).toEqual(rows(all, nOut));
          }
        }
      });
    }
  }

  test("the yardsticks measure something: read bandwidth and peak FLOP/s are positive", () => {
    expect(readBandwidth(1, 16 << 20, 2)).toBeGreaterThan(1e8);
    if (supported.includes("avx2")) expect(peakFlops(1, "f32")).toBeGreaterThan(1e9);
    const bf16 = peakFlops(1, "bf16");
    if (supported.includes("avx512_bf16")) expect(bf16).toBeGreaterThan(1e9);
    else expect(bf16).toBe(0);
  });
});
