/**
 * safetensors dtypes and the float conversions multilora needs (f32 <-> f16 <-> bf16), all with IEEE
 * round-to-nearest-even, NaN and ±Inf preserved, and subnormals handled.
 *
 * F16 and BF16 values travel as their raw 16-bit patterns in `Uint16Array`s: JavaScript has no bf16 type,
 * and keeping bits makes round trips exact.
 */

/** Every dtype a safetensors file may declare with a whole number of bytes per element. */
export const DTYPE_SIZES = {
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
} as const;

export type DType = keyof typeof DTYPE_SIZES;

/** The float dtypes LoRA weights may be stored in and converted to. */
export type FloatDType = "F32" | "F16" | "BF16";

export type TypedView =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array;

export function isDType(name: string): name is DType {
  return Object.hasOwn(DTYPE_SIZES, name);
}

export function dtypeSize(dtype: DType): number {
  return DTYPE_SIZES[dtype];
}

/** A typed array over `length` elements of `dtype` at `byteOffset` (which must be aligned to the size). */
export function typedView(
  dtype: DType,
  buffer: ArrayBufferLike,
  byteOffset: number,
  length: number,
): TypedView {
  switch (dtype) {
    case "F64":
      return new Float64Array(buffer, byteOffset, length);
    case "F32":
      return new Float32Array(buffer, byteOffset, length);
    case "F16":
    case "BF16":
    case "U16":
      return new Uint16Array(buffer, byteOffset, length);
    case "I16":
      return new Int16Array(buffer, byteOffset, length);
    case "I32":
      return new Int32Array(buffer, byteOffset, length);
    case "U32":
      return new Uint32Array(buffer, byteOffset, length);
    case "I64":
      return new BigInt64Array(buffer, byteOffset, length);
    case "U64":
      return new BigUint64Array(buffer, byteOffset, length);
    case "I8":
      return new Int8Array(buffer, byteOffset, length);
    default:
      return new Uint8Array(buffer, byteOffset, length);
  }
}

/** User-facing names (`-t bfloat16`, TensorRT-LLM's `dtype` field) to float dtypes. */
const FLOAT_DTYPE_NAMES: Record<string, FloatDType> = {
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

export function parseFloatDType(name: string): FloatDType | undefined {
  const key = name.toLowerCase();
  return Object.hasOwn(FLOAT_DTYPE_NAMES, key) ? FLOAT_DTYPE_NAMES[key] : undefined;
}

export function floatDTypeName(dtype: FloatDType): string {
  return { F32: "float32", F16: "float16", BF16: "bfloat16" }[dtype];
}

// ---------------------------------------------------------------------------------------------------
// Scalar conversions (bit patterns in, bit patterns out)

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** The IEEE binary32 bit pattern of `x` rounded to f32. */
export function f32Bits(x: number): number {
  f32Scratch[0] = x;
  return u32Scratch[0] as number;
}

/** The f32 value of a binary32 bit pattern. */
export function f32FromBits(bits: number): number {
  u32Scratch[0] = bits;
  return f32Scratch[0] as number;
}

/** bf16 bits from f32 bits, round to nearest even; NaN stays NaN (quiet, sign kept), ±Inf stays ±Inf. */
export function bf16FromF32Bits(u: number): number {
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** f16 bits from f32 bits, round to nearest even, overflow to ±Inf, subnormals kept, NaN kept quiet. */
export function f16FromF32Bits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  const mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112; // re-biased exponent (127 -> 15)
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = m & ((1 << shift) - 1);
    let res = m >>> shift;
    if (rest > half || (rest === half && (res & 1) === 1)) res++;
    return sign | res;
  }
  let res = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (res & 1) === 1)) res++; // a carry into the exponent is right
  return sign | res;
}

/** f32 bits of an f16 bit pattern (exact). */
export function f32BitsFromF16(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  // Subnormal: normalise the mantissa.
  let e = 113;
  let m = mant;
  while ((m & 0x400) === 0) {
    m <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

export const f32ToBf16 = (x: number): number => bf16FromF32Bits(f32Bits(x));
export const bf16ToF32 = (bits: number): number => f32FromBits((bits & 0xffff) << 16);
export const f32ToF16 = (x: number): number => f16FromF32Bits(f32Bits(x));
export const f16ToF32 = (bits: number): number => f32FromBits(f32BitsFromF16(bits));

// ---------------------------------------------------------------------------------------------------
// Bulk conversions

let f16Table: Uint32Array | undefined;

/** The f32 bit patterns of all 65,536 f16 values, built once on first use. */
function f16ToF32Table(): Uint32Array {
  if (!f16Table) {
    f16Table = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f32BitsFromF16(h);
  }
  return f16Table;
}

/** A float tensor's elements as they are stored: f32/f64 values, or f16/bf16 bit patterns. */
export type FloatSource =
  | { dtype: "F32"; data: Float32Array }
  | { dtype: "F64"; data: Float64Array }
  | { dtype: "F16" | "BF16"; data: Uint16Array };

/**
 * Decodes `src[from, from + count)` into `out[0, count)` as f32 bit patterns. Everything moves as integers:
 * JavaScript engines may rewrite a NaN's bits when a float passes through a variable, so NaN payloads
 * survive only this way. (F64 rounds to nearest even; its NaNs become the canonical NaN.)
 */
export function decodeToF32Bits(src: FloatSource, from: number, count: number, out: Uint32Array): void {
  if (src.dtype === "F32") {
    out.set(new Uint32Array(src.data.buffer, src.data.byteOffset + from * 4, count));
  } else if (src.dtype === "F64") {
    new Float32Array(out.buffer, out.byteOffset, count).set(src.data.subarray(from, from + count));
  } else if (src.dtype === "BF16") {
    const data = src.data;
    for (let i = 0; i < count; i++) out[i] = (data[from + i] as number) << 16;
  } else {
    const data = src.data;
    const table = f16ToF32Table();
    for (let i = 0; i < count; i++) out[i] = table[data[from + i] as number] as number;
  }
}

/** Decodes `src[from, from + count)` into `out[0, count)` as f32 values. */
export function decodeToF32(src: FloatSource, from: number, count: number, out: Float32Array): void {
  decodeToF32Bits(src, from, count, new Uint32Array(out.buffer, out.byteOffset, count));
}

/** Elements converted per block: small enough for the scratch buffers to stay in cache. */
const BLOCK = 16384;

/**
 * Writes `src[from, from + count)`, each value multiplied by `scale` in f32 arithmetic, into `out` as
 * `dtype` (`out` views the destination bytes and is aligned to the dtype's size). Values go through f32,
 * as PyTorch computes `w * scale` for f32, f16 and bf16 tensors alike. NaNs are not multiplied: they leave
 * quieted, with sign and leading payload bits. `mlr_cast_floats` (ffi/cpu/cast_floats.c) is the same
 * function in C and must stay bit-identical.
 *
 * Returns how many written values are NaN or ±Inf, so callers can refuse them without a second pass.
 */
export function castFloats(
  src: FloatSource,
  from: number,
  count: number,
  scale: number,
  dtype: FloatDType,
  out: Uint8Array,
): number {
  if (src.dtype === dtype && scale === 1) {
    const size = dtype === "F32" ? 4 : 2;
    const bytes = new Uint8Array(src.data.buffer, src.data.byteOffset + from * size, count * size);
    out.set(bytes);
    return countNonFinite(src, from, count);
  }
  const s = Math.fround(scale);
  const scratch = new Float32Array(Math.min(BLOCK, count));
  const scratchBits = new Uint32Array(scratch.buffer);
  let nonFinite = 0;
  for (let done = 0; done < count; done += BLOCK) {
    const n = Math.min(BLOCK, count - done);
    let values: Float32Array;
    if (src.dtype === "F32" && s === 1) {
      values = src.data.subarray(from + done, from + done + n);
    } else {
      values = scratch.subarray(0, n);
      decodeToF32Bits(src, from + done, n, scratchBits);
      if (s !== 1) {
        for (let i = 0; i < n; i++) {
          const u = scratchBits[i] as number;
          if ((u & 0x7fffffff) > 0x7f800000) scratchBits[i] = u | 0x400000;
          else values[i] = (values[i] as number) * s;
        }
      }
    }
    const size = dtype === "F32" ? 4 : 2;
    nonFinite += encodeFromF32(values, dtype, out.subarray(done * size, (done + n) * size));
  }
  return nonFinite;
}

/** Encodes f32 values into `out` as `dtype`; returns how many encoded values are NaN or ±Inf. */
export function encodeFromF32(values: Float32Array, dtype: FloatDType, out: Uint8Array): number {
  const n = values.length;
  const bits = new Uint32Array(values.buffer, values.byteOffset, n);
  let nonFinite = 0;
  if (dtype === "F32") {
    new Uint32Array(out.buffer, out.byteOffset, n).set(bits);
    for (let i = 0; i < n; i++) if (((bits[i] as number) & 0x7f800000) === 0x7f800000) nonFinite++;
    return nonFinite;
  }
  const dst = new Uint16Array(out.buffer, out.byteOffset, n);
  if (dtype === "BF16") {
    for (let i = 0; i < n; i++) {
      const u = bits[i] as number;
      if ((u & 0x7f800000) === 0x7f800000) {
        nonFinite++;
        dst[i] = bf16FromF32Bits(u);
      } else {
        const h = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16; // may round up to ±Inf
        dst[i] = h;
        if ((h & 0x7f80) === 0x7f80) nonFinite++;
      }
    }
    return nonFinite;
  }
  for (let i = 0; i < n; i++) {
    const h = f16FromF32Bits(bits[i] as number);
    dst[i] = h;
    if ((h & 0x7c00) === 0x7c00) nonFinite++;
  }
  return nonFinite;
}

/** How many of `src[from, from + count)` are NaN or ±Inf. */
export function countNonFinite(src: FloatSource, from: number, count: number): number {
  let n = 0;
  if (src.dtype === "F32" || src.dtype === "F64") {
    const data = src.data;
    for (let i = from; i < from + count; i++) if (!Number.isFinite(data[i] as number)) n++;
    return n;
  }
  const mask = src.dtype === "BF16" ? 0x7f80 : 0x7c00;
  const data = src.data;
  for (let i = from; i < from + count; i++) if (((data[i] as number) & mask) === mask) n++;
  return n;
}

/**
 * Rounds f32 values to `dtype`: the bytes to store (the values themselves for F32, else bit patterns)
 * and the f32 values those bytes decode to.
 */
export function roundToDType(
  values: Float32Array,
  dtype: FloatDType,
): { data: Float32Array | Uint16Array; decoded: Float32Array } {
  if (dtype === "F32") return { data: values, decoded: values };
  const bits = new Uint16Array(values.length);
  castFloats({ dtype: "F32", data: values }, 0, values.length, 1, dtype, new Uint8Array(bits.buffer));
  const decoded = new Float32Array(values.length);
  decodeToF32({ dtype, data: bits }, 0, values.length, decoded);
  return { data: bits, decoded };
}
