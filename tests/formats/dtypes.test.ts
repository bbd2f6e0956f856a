import { describe, expect, test } from "bun:test";
import {
  bf16FromF32Bits,
  bf16ToF32,
  castFloats,
  countNonFinite,
  DTYPE_SIZES,
  type DType,
  decodeToF32,
  dtypeSize,
  encodeFromF32,
  type FloatDType,
  type FloatSource,
  f16FromF32Bits,
  f16ToF32,
  f32Bits,
  f32BitsFromF16,
  f32FromBits,
  f32ToBf16,
  f32ToF16,
  floatDTypeName,
  isDType,
  parseFloatDType,
  typedView,
} from "../../src/formats/dtypes.ts";
import { rng as unitRng } from "../helpers/peft.ts";
import { VIEW_CLASS } from "../helpers/typed-arrays.ts";

// ---------------------------------------------------------------------------------------------------
// Helpers written independently of src/

const hex = (n: number, digits: number): string => `0x${n.toString(16).padStart(digits, "0")}`;

/** uint32s from the tests' deterministic PRNG. */
function rng(seed: number): () => number {
  const next = unitRng(seed);
  return () => next() * 2 ** 32;
}

/** The value of an f16 bit pattern, computed from the IEEE definition. */
function f16Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0x1f) return m === 0 ? sign * Infinity : Number.NaN;
  if (e === 0) return sign * m * 2 ** -24;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** The value of a bf16 bit pattern, computed from the IEEE definition. */
function bf16Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 7) & 0xff;
  const m = h & 0x7f;
  if (e === 0xff) return m === 0 ? sign * Infinity : Number.NaN;
  if (e === 0) return sign * m * 2 ** -133;
  return sign * (1 + m / 128) * 2 ** (e - 127);
}

const isF16NaN = (h: number): boolean => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
const isBf16NaN = (h: number): boolean => (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
const isF32NaN = (u: number): boolean => (u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0;

/** Bun's own f32 -> f16 conversion, via Float16Array. */
const f16Native = new Float16Array(1);
const f16NativeBits = new Uint16Array(f16Native.buffer);
function nativeF16Bits(x: number): number {
  f16Native[0] = x;
  return f16NativeBits[0] as number;
}

/** Nearest bf16 to an f32 value by comparing the two candidate neighbours (ties to even). */
function referenceBf16(u: number): number {
  const x = f32FromBits(u);
  if (Number.isNaN(x)) return Number.NaN;
  if (!Number.isFinite(x)) return (u >>> 16) & 0xffff;
  const lo = (u >>> 16) & 0xffff; // truncation toward zero
  const hi = lo + 1; // next magnitude up (may be ±Inf)
  const dLo = Math.abs(x - bf16Value(lo));
  const hiValue = bf16Value(hi);
  // The overflow threshold for bf16 is max finite + half an ulp: 0x7f7f8000 rounds to Inf.
  const dHi = Number.isFinite(hiValue) ? Math.abs(bf16Value(hi) - x) : Math.abs(2 ** 128 - Math.abs(x));
  if (dLo < dHi) return lo;
  if (dHi < dLo) return hi;
  return (lo & 1) === 0 ? lo : hi;
}

// ---------------------------------------------------------------------------------------------------

describe("dtype table and names", () => {
  test("DTYPE_SIZES lists every safetensors dtype with its element size in bytes", () => {
    expect({ ...DTYPE_SIZES }).toEqual({
      BOOL: 1,
      U8: 1,
      I8: 1,
      F8_E5M2: 1,
      F8_E4M3: 1,
      F8_E8M0: 1,
      I16: 2,
      U16: 2,
      F16: 2,
      BF16: 2,
      I32: 4,
      U32: 4,
      F32: 4,
      I64: 8,
      U64: 8,
      F64: 8,
    });
    for (const [name, size] of Object.entries(DTYPE_SIZES)) expect(dtypeSize(name as DType)).toBe(size);
  });

  test("isDType accepts exactly the listed names, case-sensitively, and no prototype keys", () => {
    for (const name of Object.keys(DTYPE_SIZES)) expect(isDType(name)).toBe(true);
    for (const name of ["f32", "F4", "FP8", "", "toString", "constructor", "__proto__", "hasOwnProperty"]) {
      expect(isDType(name)).toBe(false);
    }
  });

  test("typedView returns the typed array class that matches each dtype", () => {
    const buffer = new ArrayBuffer(64);
    const expected = VIEW_CLASS;
    for (const [dtype, cls] of Object.entries(expected)) {
      const view = typedView(dtype as DType, buffer, 8, 3);
      expect(view.constructor).toBe(cls as typeof Uint8Array);
      expect(view.buffer).toBe(buffer);
      expect(view.byteOffset).toBe(8);
      expect(view.length).toBe(3);
    }
  });

  test("parseFloatDType maps every user-facing name, ignoring case", () => {
    const names: Record<string, FloatDType> = {
      float32: "F32",
      fp32: "F32",
      f32: "F32",
      float: "F32",
      float16: "F16",
      fp16: "F16",
      f16: "F16",
      half: "F16",
      bfloat16: "BF16",
      bf16: "BF16",
    };
    for (const [name, dtype] of Object.entries(names)) {
      expect(parseFloatDType(name)).toBe(dtype);
      expect(parseFloatDType(name.toUpperCase())).toBe(dtype);
    }
    expect(parseFloatDType("BFloat16")).toBe("BF16");
    expect(parseFloatDType("Half")).toBe("F16");
  });

  test("parseFloatDType returns undefined for names that are not float dtypes", () => {
    for (const name of ["", "int8", "fp8", "float64", "double", "bfloat", " f16", "f16 "]) {
      expect(parseFloatDType(name)).toBeUndefined();
    }
  });

  test("parseFloatDType returns undefined for names that are Object.prototype keys", () => {
    expect(parseFloatDType("constructor")).toBeUndefined();
    expect(parseFloatDType("__proto__")).toBeUndefined();
  });

  test("floatDTypeName gives the canonical name, which parses back to the same dtype", () => {
    expect(floatDTypeName("F32")).toBe("float32");
    expect(floatDTypeName("F16")).toBe("float16");
    expect(floatDTypeName("BF16")).toBe("bfloat16");
    for (const dtype of ["F32", "F16", "BF16"] as const)
      expect(parseFloatDType(floatDTypeName(dtype))).toBe(dtype);
  });
});

describe("f32 bit helpers", () => {
  test("f32Bits rounds a number to f32 and returns its binary32 pattern", () => {
    expect(f32Bits(1)).toBe(0x3f800000);
    expect(f32Bits(-2)).toBe(0xc0000000);
    expect(f32Bits(-0)).toBe(0x80000000);
    expect(f32Bits(0.1)).toBe(0x3dcccccd);
    expect(f32Bits(Infinity)).toBe(0x7f800000);
    expect(f32Bits(-Infinity)).toBe(0xff800000);
    expect(f32Bits(1e39)).toBe(0x7f800000);
    expect(f32Bits(2 ** -149)).toBe(0x00000001);
    expect(isF32NaN(f32Bits(Number.NaN))).toBe(true);
  });

  test("f32FromBits decodes a binary32 pattern", () => {
    expect(f32FromBits(0x3f800000)).toBe(1);
    expect(Object.is(f32FromBits(0x80000000), -0)).toBe(true);
    expect(f32FromBits(0x7f7fffff)).toBe(3.4028234663852886e38);
    expect(f32FromBits(0x00000001)).toBe(2 ** -149);
    expect(f32FromBits(0xff800000)).toBe(-Infinity);
    expect(f32FromBits(0x7fc00000)).toBeNaN();
  });
});

describe("f32 -> f16 (round to nearest even)", () => {
  // [f32 bits, f16 bits, what]
  const cases: [number, number, string][] = [
    [0x3f800000, 0x3c00, "1.0"],
    [0xbf800000, 0xbc00, "-1.0"],
    [0x40000000, 0x4000, "2.0"],
    [0x3f000000, 0x3800, "0.5"],
    [0x3dcccccd, 0x2e66, "0.1"],
    [0x00000000, 0x0000, "+0"],
    [0x80000000, 0x8000, "-0"],
    [0x477fe000, 0x7bff, "65504, the largest finite f16"],
    [0x477fefff, 0x7bff, "just below 65520 rounds down to 65504"],
    [0x477ff000, 0x7c00, "65520 ties to even: Inf"],
    [0xc77ff000, 0xfc00, "-65520 ties to even: -Inf"],
    [0x47800000, 0x7c00, "65536 overflows to Inf"],
    [0x7f7fffff, 0x7c00, "f32 max finite overflows to Inf"],
    [0xff7fffff, 0xfc00, "f32 min finite overflows to -Inf"],
    [0x7f800000, 0x7c00, "+Inf"],
    [0xff800000, 0xfc00, "-Inf"],
    [0x38800000, 0x0400, "2^-14, the smallest normal f16"],
    [0x387fc000, 0x03ff, "1023 * 2^-24, the largest f16 subnormal"],
    [0x387fe000, 0x0400, "1023.5 * 2^-24 ties to even and carries into the exponent"],
    [0x33800000, 0x0001, "2^-24, the smallest f16 subnormal"],
    [0xb3800000, 0x8001, "-2^-24"],
    [0x33000000, 0x0000, "2^-25 ties to even: 0"],
    [0xb3000000, 0x8000, "-2^-25 ties to even: -0"],
    [0x33000001, 0x0001, "just above 2^-25 rounds up to 2^-24"],
    [0x33c00000, 0x0002, "3 * 2^-25 ties to even: 2 * 2^-24"],
    [0x34200000, 0x0002, "5 * 2^-25 ties to even: 2 * 2^-24"],
    [0x32800000, 0x0000, "2^-26 underflows to 0"],
    [0x00000001, 0x0000, "the smallest f32 subnormal underflows to 0"],
    [0x80000001, 0x8000, "the smallest negative f32 subnormal underflows to -0"],
    [0x3f801000, 0x3c00, "1 + 2^-11 ties to even: 1"],
    [0x3f801001, 0x3c01, "just above 1 + 2^-11 rounds up"],
    [0x3f803000, 0x3c02, "1 + 3 * 2^-11 ties to even: 1 + 2^-9"],
    [0x3f802fff, 0x3c01, "just below 1 + 3 * 2^-11 rounds down"],
    [0x7fc00000, 0x7e00, "quiet NaN"],
    [0xffc00000, 0xfe00, "negative quiet NaN keeps its sign"],
    [0x7f800001, 0x7e00, "signalling NaN becomes quiet"],
    [0xff800001, 0xfe00, "negative signalling NaN becomes quiet and keeps its sign"],
    [0x7fa00000, 0x7f00, "signalling NaN keeps its top payload bits"],
    [0x7f802000, 0x7e01, "NaN payload bit 13 becomes f16 payload bit 0"],
    [0x7fffffff, 0x7fff, "all-ones NaN"],
  ];
  for (const [u, h, what] of cases) {
    test(`f16FromF32Bits(${hex(u, 8)}) is ${hex(h, 4)}: ${what}`, () => {
      expect(hex(f16FromF32Bits(u), 4)).toBe(hex(h, 4));
      expect(hex(f32ToF16(f32FromBits(u)), 4)).toBe(isF32NaN(u) ? hex(0x7e00, 4) : hex(h, 4));
    });
  }

  test("f32ToF16 converts numbers to the expected f16 bits", () => {
    expect(f32ToF16(1)).toBe(0x3c00);
    expect(f32ToF16(65504)).toBe(0x7bff);
    expect(f32ToF16(65520)).toBe(0x7c00);
    expect(f32ToF16(-65520)).toBe(0xfc00);
    expect(f32ToF16(2 ** -24)).toBe(0x0001);
    expect(f32ToF16(2 ** -25)).toBe(0x0000);
    expect(f32ToF16(3 * 2 ** -25)).toBe(0x0002);
    expect(f32ToF16(-0)).toBe(0x8000);
    expect(f32ToF16(Infinity)).toBe(0x7c00);
    expect(f32ToF16(-Infinity)).toBe(0xfc00);
    const nan = f32ToF16(Number.NaN);
    expect(isF16NaN(nan)).toBe(true);
    expect(nan & 0x200).toBe(0x200); // quiet
  });

  test("f32ToF16 agrees with Float16Array on random f32 bit patterns across the whole range", () => {
    const next = rng(1);
    const mismatches: string[] = [];
    for (let i = 0; i < 200_000; i++) {
      const u = next();
      const x = f32FromBits(u);
      if (Number.isNaN(x)) continue;
      const got = f32ToF16(x);
      const want = nativeF16Bits(x);
      if (got !== want) mismatches.push(`${hex(u, 8)}: ${hex(got, 4)} != ${hex(want, 4)}`);
    }
    expect(mismatches.slice(0, 10)).toEqual([]);
  });

  test("f32ToF16 agrees with Float16Array in the subnormal, tie and overflow ranges", () => {
    const next = rng(2);
    const mismatches: string[] = [];
    const lowBits = [0, 1, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x7fffff, 0x400000, 0x7fe000];
    // Every f32 exponent from well below the f16 subnormal range to well past f16 overflow, both signs.
    for (let exp = 95; exp <= 145; exp++) {
      for (const sign of [0, 0x80000000]) {
        const base = (sign | (exp << 23)) >>> 0;
        const mantissas = [...lowBits];
        for (let k = 0; k < 2000; k++) {
          const r = next() & 0x7fffff;
          mantissas.push(r, (r & ~0x1fff) | 0x1000, (r & ~0x1fff) | 0x0fff);
        }
        // Exact ties at every subnormal shift.
        for (let s = 0; s < 24; s++)
          mantissas.push((next() & 0x7fffff & ~((1 << s) - 1)) | (s > 0 ? 1 << (s - 1) : 0));
        for (const m of mantissas) {
          const u = (base | (m & 0x7fffff)) >>> 0;
          const x = f32FromBits(u);
          const got = f32ToF16(x);
          const want = nativeF16Bits(x);
          if (got !== want) mismatches.push(`${hex(u, 8)}: ${hex(got, 4)} != ${hex(want, 4)}`);
        }
      }
    }
    expect(mismatches.slice(0, 10)).toEqual([]);
  });
});

describe("f32 -> bf16 (round to nearest even)", () => {
  const cases: [number, number, string][] = [
    [0x3f800000, 0x3f80, "1.0"],
    [0xbfc00000, 0xbfc0, "-1.5"],
    [0x3dcccccd, 0x3dcd, "0.1 rounds up"],
    [0x3f808000, 0x3f80, "tie with even lower half rounds down"],
    [0x3f818000, 0x3f82, "tie with odd lower half rounds up"],
    [0x3f808001, 0x3f81, "just above the tie rounds up"],
    [0x3f807fff, 0x3f80, "just below the tie rounds down"],
    [0xbf818000, 0xbf82, "negative tie with odd lower half rounds up in magnitude"],
    [0x00000000, 0x0000, "+0"],
    [0x80000000, 0x8000, "-0"],
    [0x00000001, 0x0000, "the smallest f32 subnormal rounds to 0"],
    [0x00008000, 0x0000, "subnormal tie rounds to even 0"],
    [0x00018000, 0x0002, "subnormal tie rounds to even 2"],
    [0x007fffff, 0x0080, "the largest f32 subnormal rounds up to the smallest normal"],
    [0x7f7f7fff, 0x7f7f, "the largest value that stays finite"],
    [0x7f7f8000, 0x7f80, "max finite bf16 plus half an ulp ties to even: Inf"],
    [0x7f7fffff, 0x7f80, "f32 max finite rounds to Inf"],
    [0xff7fffff, 0xff80, "f32 min finite rounds to -Inf"],
    [0x7f800000, 0x7f80, "+Inf"],
    [0xff800000, 0xff80, "-Inf"],
    [0x7fc00000, 0x7fc0, "quiet NaN"],
    [0xffc00000, 0xffc0, "negative quiet NaN keeps its sign"],
    [0x7f800001, 0x7fc0, "signalling NaN with only low payload bits stays NaN and becomes quiet"],
    [0xff800001, 0xffc0, "negative signalling NaN stays NaN, quiet, with its sign"],
    [0x7f808000, 0x7fc0, "NaN whose payload would round away stays NaN"],
    [0x7fffffff, 0x7fff, "all-ones NaN does not carry into the sign"],
    [0xffffffff, 0xffff, "negative all-ones NaN"],
  ];
  for (const [u, h, what] of cases) {
    test(`bf16FromF32Bits(${hex(u, 8)}) is ${hex(h, 4)}: ${what}`, () => {
      expect(hex(bf16FromF32Bits(u), 4)).toBe(hex(h, 4));
      if (!isF32NaN(u)) expect(hex(f32ToBf16(f32FromBits(u)), 4)).toBe(hex(h, 4));
    });
  }

  test("f32ToBf16 converts numbers to the expected bf16 bits", () => {
    expect(f32ToBf16(1)).toBe(0x3f80);
    expect(f32ToBf16(-0)).toBe(0x8000);
    expect(f32ToBf16(Infinity)).toBe(0x7f80);
    expect(f32ToBf16(-Infinity)).toBe(0xff80);
    expect(f32ToBf16(3.4028234663852886e38)).toBe(0x7f80);
    expect(f32ToBf16(65520)).toBe(0x4780);
    const nan = f32ToBf16(Number.NaN);
    expect(isBf16NaN(nan)).toBe(true);
    expect(nan & 0x40).toBe(0x40); // quiet
  });

  test("bf16FromF32Bits picks the nearest bf16 (ties to even) on random f32 bit patterns", () => {
    const next = rng(3);
    const mismatches: string[] = [];
    for (let i = 0; i < 100_000; i++) {
      let u = next();
      if (i % 4 === 1) u = ((u & 0xffff0000) | 0x8000) >>> 0; // exact tie
      if (i % 4 === 2) u = ((u & 0xffff0000) | 0x7fff) >>> 0; // just below a tie
      const got = bf16FromF32Bits(u);
      if (isF32NaN(u)) {
        if (!isBf16NaN(got) || (got & 0x8000) !== ((u >>> 16) & 0x8000) || (got & 0x40) === 0) {
          mismatches.push(`${hex(u, 8)}: ${hex(got, 4)} is not a quiet NaN with the same sign`);
        }
        continue;
      }
      const want = referenceBf16(u);
      if (got !== want) mismatches.push(`${hex(u, 8)}: ${hex(got, 4)} != ${hex(want, 4)}`);
    }
    expect(mismatches.slice(0, 10)).toEqual([]);
  });
});

describe("f16 and bf16 -> f32 on all 65,536 patterns", () => {
  test("f16ToF32 equals Float16Array's decoding for every pattern (NaN patterns decode to NaN)", () => {
    const native = new Float16Array(1);
    const bits = new Uint16Array(native.buffer);
    const mismatches: string[] = [];
    for (let h = 0; h < 65536; h++) {
      bits[0] = h;
      const want = native[0] as number;
      const got = f16ToF32(h);
      if (Number.isNaN(want) ? !Number.isNaN(got) : !Object.is(got, want)) {
        mismatches.push(`${hex(h, 4)}: ${got} != ${want}`);
      }
    }
    expect(mismatches.slice(0, 10)).toEqual([]);
  });

  test("f16ToF32 equals the IEEE definition for every pattern", () => {
    const mismatches: string[] = [];
    for (let h = 0; h < 65536; h++) {
      const want = f16Value(h);
      const got = f16ToF32(h);
      if (Number.isNaN(want) ? !Number.isNaN(got) : !Object.is(got, want)) mismatches.push(hex(h, 4));
    }
    expect(mismatches.slice(0, 10)).toEqual([]);
  });

  test("f32BitsFromF16 keeps the sign and payload of NaN patterns", () => {
    expect(hex(f32BitsFromF16(0x7e00), 8)).toBe("0x7fc00000");
    expect(hex(f32BitsFromF16(0xfe00), 8)).toBe("0xffc00000");
    expect(hex(f32BitsFromF16(0x7c01), 8)).toBe("0x7f802000");
    expect(hex(f32BitsFromF16(0xffff), 8)).toBe("0xffffe000");
    expect(hex(f32BitsFromF16(0x7c00), 8)).toBe("0x7f800000");
    expect(hex(f32BitsFromF16(0xfc00), 8)).toBe("0xff800000");
    expect(hex(f32BitsFromF16(0x8000), 8)).toBe("0x80000000");
    expect(hex(f32BitsFromF16(0x0001), 8)).toBe("0x33800000");
    expect(hex(f32BitsFromF16(0x03ff), 8)).toBe("0x387fc000");
    expect(hex(f32BitsFromF16(0x7bff), 8)).toBe("0x477fe000");
  });

  test("bf16ToF32 equals the IEEE definition for every pattern (NaN patterns decode to NaN)", () => {
    const mismatches: string[] = [];
    for (let h = 0; h < 65536; h++) {
      const want = bf16Value(h);
      const got = bf16ToF32(h);
      if (Number.isNaN(want) ? !Number.isNaN(got) : !Object.is(got, want)) mismatches.push(hex(h, 4));
    }
    expect(mismatches.slice(0, 10)).toEqual([]);
  });

  test("f16 -> f32 -> f16 is exact for every non-NaN pattern, and NaN patterns come back quiet", () => {
    const mismatches: string[] = [];
    for (let h = 0; h < 65536; h++) {
      const back = f16FromF32Bits(f32BitsFromF16(h));
      const want = isF16NaN(h) ? h | 0x200 : h;
      if (back !== want) mismatches.push(`${hex(h, 4)} -> ${hex(back, 4)}`);
      if (!isF16NaN(h) && f32ToF16(f16ToF32(h)) !== h) mismatches.push(`number path ${hex(h, 4)}`);
    }
    expect(mismatches.slice(0, 10)).toEqual([]);
  });

  test("bf16 -> f32 -> bf16 is exact for every non-NaN pattern, and NaN patterns come back quiet", () => {
    const mismatches: string[] = [];
    for (let h = 0; h < 65536; h++) {
      const back = bf16FromF32Bits(f32Bits(bf16ToF32(h)));
      if (isBf16NaN(h)) {
        if (!isBf16NaN(back)) mismatches.push(`${hex(h, 4)} -> ${hex(back, 4)} is not NaN`);
        if (bf16FromF32Bits((h << 16) >>> 0) !== (h | 0x40)) mismatches.push(`bits ${hex(h, 4)}`);
      } else if (back !== h) {
        mismatches.push(`${hex(h, 4)} -> ${hex(back, 4)}`);
      }
    }
    expect(mismatches.slice(0, 10)).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------
// Bulk conversions

/** Source values (as f32) that exercise rounding, overflow, subnormals and non-finite values. */
const VALUES = [
  0,
  -0,
  1,
  -1.5,
  0.1,
  1 / 3,
  65504,
  65520,
  60000,
  -70000,
  1e5,
  3e38,
  -3e38,
  2 ** -24,
  2 ** -25,
  3 * 2 ** -25,
  2 ** -130,
  1 + 2 ** -8, // a bf16 tie
  1 + 2 ** -11, // an f16 tie
  Infinity,
  -Infinity,
  Number.NaN,
].map(Math.fround);

function sourceOf(dtype: FloatSource["dtype"], values: readonly number[]): FloatSource {
  switch (dtype) {
    case "F32":
      return { dtype, data: Float32Array.from(values) };
    case "F64":
      // Values that are not f32 values too, so the f64 -> f32 rounding is exercised.
      return { dtype, data: Float64Array.from(values, (v, i) => (i % 2 === 1 ? v * (1 + 2 ** -30) : v)) };
    case "F16":
      return { dtype, data: Uint16Array.from(values, f32ToF16) };
    case "BF16":
      return { dtype, data: Uint16Array.from(values, f32ToBf16) };
  }
}

/** The f32 value of element `i` of a source, decoded with the (separately verified) scalar functions. */
function scalarDecode(src: FloatSource, i: number): number {
  const v = src.data[i] as number;
  if (src.dtype === "F16") return f16ToF32(v);
  if (src.dtype === "BF16") return bf16ToF32(v);
  return Math.fround(v);
}

/** The output bit pattern for one f32 value. */
function scalarEncode(x: number, dtype: FloatDType): number {
  if (dtype === "F32") return f32Bits(x);
  return dtype === "F16" ? f32ToF16(x) : f32ToBf16(x);
}

function isNaNBits(bits: number, dtype: FloatDType): boolean {
  return dtype === "F32" ? isF32NaN(bits) : dtype === "F16" ? isF16NaN(bits) : isBf16NaN(bits);
}

function isNonFiniteBits(bits: number, dtype: FloatDType): boolean {
  const mask = dtype === "F32" ? 0x7f800000 : dtype === "F16" ? 0x7c00 : 0x7f80;
  return (bits & mask) === mask;
}

function outputBits(out: Uint8Array, dtype: FloatDType): number[] {
  const n = out.length / (dtype === "F32" ? 4 : 2);
  return Array.from(
    dtype === "F32"
      ? new Uint32Array(out.buffer, out.byteOffset, n)
      : new Uint16Array(out.buffer, out.byteOffset, n),
  );
}

/** Compares bit patterns exactly, except that any NaN matches any NaN (payloads may be canonicalised). */
function bitsMismatches(got: number[], want: number[], dtype: FloatDType): string[] {
  const problems: string[] = [];
  if (got.length !== want.length) return [`length ${got.length} != ${want.length}`];
  for (let i = 0; i < got.length; i++) {
    const g = got[i] as number;
    const w = want[i] as number;
    const ok = isNaNBits(w, dtype) ? isNaNBits(g, dtype) : g === w;
    if (!ok) problems.push(`[${i}] ${hex(g, 4)} != ${hex(w, 4)}`);
  }
  return problems;
}

const SOURCES = ["F32", "F64", "F16", "BF16"] as const;
const OUTPUTS = ["F32", "F16", "BF16"] as const;

describe("castFloats", () => {
  for (const srcType of SOURCES) {
    for (const outType of OUTPUTS) {
      for (const scale of [1, 2, 0.3, -1e-3]) {
        test(`casts ${srcType} to ${outType} with scale ${scale} exactly as scalar f32 arithmetic does`, () => {
          const src = sourceOf(srcType, VALUES);
          const from = 2;
          const count = VALUES.length - 3;
          const size = outType === "F32" ? 4 : 2;
          const out = new Uint8Array(count * size);
          const nonFinite = castFloats(src, from, count, scale, outType, out);
          const s = Math.fround(scale);
          const want: number[] = [];
          for (let i = from; i < from + count; i++) {
            const v = scalarDecode(src, i);
            want.push(scalarEncode(scale === 1 ? v : Math.fround(v * s), outType));
          }
          const got = outputBits(out, outType);
          expect(bitsMismatches(got, want, outType)).toEqual([]);
          expect(nonFinite).toBe(want.filter((b) => isNonFiniteBits(b, outType)).length);
        });
      }
    }
  }

  test("casts more than one block (16,384 elements) with an offset, matching scalar conversion", () => {
    const next = rng(4);
    const n = 40_000;
    const values = Array.from({ length: n + 5 }, () => {
      const u = next();
      // Mostly moderate magnitudes, some anything-goes patterns.
      return f32FromBits(u % 8 === 0 ? u : ((u & 0x807fffff) | ((((u >>> 24) % 40) + 100) << 23)) >>> 0);
    });
    for (const srcType of SOURCES) {
      const src = sourceOf(srcType, values);
      for (const outType of OUTPUTS) {
        for (const scale of [1, 1.75]) {
          const out = new Uint8Array(n * (outType === "F32" ? 4 : 2));
          const nonFinite = castFloats(src, 5, n, scale, outType, out);
          const want: number[] = [];
          for (let i = 5; i < 5 + n; i++) {
            const v = scalarDecode(src, i);
            want.push(scalarEncode(scale === 1 ? v : Math.fround(v * Math.fround(scale)), outType));
          }
          expect(bitsMismatches(outputBits(out, outType), want, outType).slice(0, 5)).toEqual([]);
          expect(nonFinite).toBe(want.filter((b) => isNonFiniteBits(b, outType)).length);
        }
      }
    }
  });

  test("counts a finite value that overflows f16 after scaling as non-finite", () => {
    const src: FloatSource = { dtype: "F32", data: new Float32Array([60000, 1, -40000]) };
    const f16 = new Uint8Array(6);
    expect(castFloats(src, 0, 3, 2, "F16", f16)).toBe(2);
    expect(Array.from(new Uint16Array(f16.buffer))).toEqual([0x7c00, 0x4000, 0xfc00]);
    const bf16 = new Uint8Array(6);
    expect(castFloats(src, 0, 3, 2, "BF16", bf16)).toBe(0);
    expect(Array.from(new Uint16Array(bf16.buffer))).toEqual([0x47ea, 0x4000, 0xc79c]);
    const f32 = new Uint8Array(12);
    expect(castFloats(src, 0, 3, 2, "F32", f32)).toBe(0);
    expect(Array.from(new Float32Array(f32.buffer))).toEqual([120000, 2, -80000]);
  });

  test("counts 65520 as non-finite when cast to F16 without a scale", () => {
    const src: FloatSource = { dtype: "F32", data: new Float32Array([65504, 65520]) };
    const out = new Uint8Array(4);
    expect(castFloats(src, 0, 2, 1, "F16", out)).toBe(1);
    expect(Array.from(new Uint16Array(out.buffer))).toEqual([0x7bff, 0x7c00]);
  });

  test("counts an f32 product that overflows to Inf as non-finite in every output dtype", () => {
    const src: FloatSource = { dtype: "BF16", data: new Uint16Array([0x7f00, 0x3f80]) }; // 2^127, 1
    for (const dtype of OUTPUTS) {
      const out = new Uint8Array(2 * (dtype === "F32" ? 4 : 2));
      expect(castFloats(src, 0, 2, 4, dtype, out)).toBe(1);
      const want = { F32: [0x7f800000, 0x40800000], F16: [0x7c00, 0x4400], BF16: [0x7f80, 0x4080] }[dtype];
      expect(outputBits(out, dtype)).toEqual(want);
    }
  });

  test("copies same-dtype data unchanged with scale 1, NaN payloads included, and counts NaN and Inf", () => {
    const f16: FloatSource = {
      dtype: "F16",
      data: new Uint16Array([0x3c00, 0x7c01, 0xfc00, 0x0001, 0x7bff]),
    };
    const out16 = new Uint8Array(8);
    expect(castFloats(f16, 1, 4, 1, "F16", out16)).toBe(2);
    expect(Array.from(new Uint16Array(out16.buffer))).toEqual([0x7c01, 0xfc00, 0x0001, 0x7bff]);
    const bf16: FloatSource = { dtype: "BF16", data: new Uint16Array([0x7f81, 0xff80, 0x3f80]) };
    const outB = new Uint8Array(6);
    expect(castFloats(bf16, 0, 3, 1, "BF16", outB)).toBe(2);
    expect(Array.from(new Uint16Array(outB.buffer))).toEqual([0x7f81, 0xff80, 0x3f80]);
    const f32: FloatSource = {
      dtype: "F32",
      data: new Float32Array(new Uint32Array([0x7f800001, 0x3f800000]).buffer),
    };
    const out32 = new Uint8Array(8);
    expect(castFloats(f32, 0, 2, 1, "F32", out32)).toBe(1);
    expect(Array.from(new Uint32Array(out32.buffer))).toEqual([0x7f800001, 0x3f800000]);
  });

  test("rounds the scale to f32 before multiplying", () => {
    // 0.1 is not an f32; Math.fround(0.1) = 0x3dcccccd. 3 * fround(0.1) rounded to f32 is 0x3e99999a.
    const src: FloatSource = { dtype: "F32", data: new Float32Array([3]) };
    const out = new Uint8Array(4);
    castFloats(src, 0, 1, 0.1, "F32", out);
    expect(hex(new Uint32Array(out.buffer)[0] as number, 8)).toBe("0x3e99999a");
  });

  test("rounds F64 values to f32 before rounding to f16 (values go through f32)", () => {
    // 1 + 2^-11 + 2^-30 rounds to f32 1 + 2^-11, an exact f16 tie that rounds to even 1.0.
    const src: FloatSource = { dtype: "F64", data: new Float64Array([1 + 2 ** -11 + 2 ** -30]) };
    const out = new Uint8Array(2);
    castFloats(src, 0, 1, 1, "F16", out);
    expect(hex(new Uint16Array(out.buffer)[0] as number, 4)).toBe("0x3c00");
  });

  test("writes nothing and returns 0 for a count of 0", () => {
    const out = new Uint8Array(4).fill(0xaa);
    for (const srcType of SOURCES) {
      for (const dtype of OUTPUTS) {
        expect(castFloats(sourceOf(srcType, [1, 2]), 1, 0, 3, dtype, out.subarray(0, 0))).toBe(0);
      }
    }
    expect(Array.from(out)).toEqual([0xaa, 0xaa, 0xaa, 0xaa]);
  });

  test("writes into an aligned subarray of a larger destination without touching the rest", () => {
    const dest = new Uint8Array(16).fill(0xee);
    const src: FloatSource = { dtype: "F32", data: new Float32Array([1, -2]) };
    castFloats(src, 0, 2, 1, "BF16", dest.subarray(4, 8));
    expect(Array.from(dest)).toEqual([
      0xee, 0xee, 0xee, 0xee, 0x80, 0x3f, 0x00, 0xc0, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee,
    ]);
  });
});

describe("decodeToF32", () => {
  test("decodes a range of each source dtype into f32", () => {
    const cases: [FloatSource, number[]][] = [
      [{ dtype: "F32", data: new Float32Array([9, 1.5, -0, Infinity]) }, [1.5, -0, Infinity]],
      [
        { dtype: "F64", data: new Float64Array([9, 0.1, 1 + 2 ** -24, 1 + 3 * 2 ** -24, 1e300, -1e-50]) },
        [f32FromBits(0x3dcccccd), 1, 1 + 2 ** -22, Infinity, -0],
      ],
      [
        { dtype: "F16", data: new Uint16Array([0x4000, 0x3c00, 0x8001, 0x7bff, 0xfc00]) },
        [1, -(2 ** -24), 65504, -Infinity],
      ],
      [
        { dtype: "BF16", data: new Uint16Array([0x4000, 0x3f80, 0x8001, 0x7f7f, 0xff80]) },
        [1, -(2 ** -133), 3.3895313892515355e38, -Infinity],
      ],
    ];
    for (const [src, want] of cases) {
      const out = new Float32Array(want.length + 2).fill(7);
      decodeToF32(src, 1, want.length, out.subarray(1, 1 + want.length));
      expect(Array.from(out)).toEqual([7, ...want, 7]);
      for (let i = 0; i < want.length; i++) expect(Object.is(out[i + 1], want[i])).toBe(true);
    }
  });

  test("decodes NaN patterns of every source dtype to NaN", () => {
    const sources: FloatSource[] = [
      { dtype: "F32", data: new Float32Array([Number.NaN]) },
      { dtype: "F64", data: new Float64Array([Number.NaN]) },
      { dtype: "F16", data: new Uint16Array([0xfe00]) },
      { dtype: "BF16", data: new Uint16Array([0x7f81]) },
    ];
    for (const src of sources) {
      const out = new Float32Array(1);
      decodeToF32(src, 0, 1, out);
      expect(out[0]).toBeNaN();
    }
  });

  test("decodes bf16 bits exactly to the upper half of the f32 bits", () => {
    const data = new Uint16Array(65536);
    for (let h = 0; h < 65536; h++) data[h] = h;
    const out = new Float32Array(65536);
    decodeToF32({ dtype: "BF16", data }, 0, 65536, out);
    const bits = new Uint32Array(out.buffer);
    const mismatches: number[] = [];
    for (let h = 0; h < 65536; h++) if (bits[h] !== (h << 16) >>> 0) mismatches.push(h);
    expect(mismatches).toEqual([]);
  });

  test("decodes every f16 pattern to the value Float16Array gives", () => {
    const data = new Uint16Array(65536);
    for (let h = 0; h < 65536; h++) data[h] = h;
    const out = new Float32Array(65536);
    decodeToF32({ dtype: "F16", data }, 0, 65536, out);
    const native = new Float16Array(data.buffer);
    const mismatches: number[] = [];
    for (let h = 0; h < 65536; h++) {
      const want = native[h] as number;
      if (Number.isNaN(want) ? !Number.isNaN(out[h] as number) : !Object.is(out[h], want)) mismatches.push(h);
    }
    expect(mismatches).toEqual([]);
  });
});

describe("encodeFromF32", () => {
  const values = new Float32Array([
    1,
    -0,
    65520,
    2 ** -25,
    3 * 2 ** -25,
    Infinity,
    -Infinity,
    Number.NaN,
    3.4028234663852886e38,
    1 + 2 ** -8,
  ]);

  test("encodes to F16 bits and counts NaN and Inf results", () => {
    const out = new Uint8Array(values.length * 2);
    expect(encodeFromF32(values, "F16", out)).toBe(5);
    const bits = Array.from(new Uint16Array(out.buffer));
    expect(bits.slice(0, 7)).toEqual([0x3c00, 0x8000, 0x7c00, 0x0000, 0x0002, 0x7c00, 0xfc00]);
    expect(isF16NaN(bits[7] as number)).toBe(true);
    expect(bits.slice(8)).toEqual([0x7c00, 0x3c04]);
  });

  test("encodes to BF16 bits and counts NaN, Inf and values that round up to Inf", () => {
    const out = new Uint8Array(values.length * 2);
    expect(encodeFromF32(values, "BF16", out)).toBe(4);
    const bits = Array.from(new Uint16Array(out.buffer));
    expect(bits.slice(0, 7)).toEqual([0x3f80, 0x8000, 0x4780, 0x3300, 0x33c0, 0x7f80, 0xff80]);
    expect(isBf16NaN(bits[7] as number)).toBe(true);
    expect(bits.slice(8)).toEqual([0x7f80, 0x3f80]);
  });

  test("encodes to F32 bits unchanged and counts NaN and Inf", () => {
    const out = new Uint8Array(values.length * 4);
    expect(encodeFromF32(values, "F32", out)).toBe(3);
    expect(Array.from(new Uint32Array(out.buffer))).toEqual(Array.from(new Uint32Array(values.buffer)));
  });

  test("encodes from a subarray of a larger Float32Array", () => {
    const out = new Uint8Array(4);
    expect(encodeFromF32(values.subarray(5, 7), "F16", out)).toBe(2);
    expect(Array.from(new Uint16Array(out.buffer))).toEqual([0x7c00, 0xfc00]);
  });
});

describe("countNonFinite", () => {
  test("counts NaN and ±Inf in a range of each source dtype", () => {
    const cases: [FloatSource, number, number, number][] = [
      [{ dtype: "F32", data: new Float32Array([Number.NaN, 1, Infinity, -Infinity, 3e38]) }, 1, 4, 2],
      [{ dtype: "F32", data: new Float32Array([Number.NaN, 1, Infinity, -Infinity, 3e38]) }, 0, 5, 3],
      [{ dtype: "F64", data: new Float64Array([1e300, Number.NaN, -Infinity, 2]) }, 0, 4, 2],
      [{ dtype: "F16", data: new Uint16Array([0x7c00, 0xfc00, 0x7e00, 0x7bff, 0xfbff, 0x0001]) }, 0, 6, 3],
      [{ dtype: "F16", data: new Uint16Array([0x7c00, 0xfc00, 0x7e00, 0x7bff, 0xfbff, 0x0001]) }, 2, 2, 1],
      [{ dtype: "BF16", data: new Uint16Array([0x7f80, 0xff80, 0x7fc1, 0x7f7f, 0xff7f, 0x7c00]) }, 0, 6, 3],
      [{ dtype: "BF16", data: new Uint16Array([0x7f80, 0xff80, 0x7fc1, 0x7f7f]) }, 3, 1, 0],
    ];
    for (const [src, from, count, want] of cases) expect(countNonFinite(src, from, count)).toBe(want);
  });
});
