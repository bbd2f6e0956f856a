/**
 * Independent reference computations for converter tests: output rows built from the PEFT tensors with
 * rounding written here differently from src/ (nearest-candidate search for bf16, the runtime's own
 * Float16Array for f16), so a shared mistake cannot hide.
 */
import type { FloatDType } from "../../src/formats/dtypes.ts";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** bf16 bits of f32 `x` by picking the nearer of the two neighbouring bf16 values (ties to even). */
export function refBf16(x: number): number {
  f32[0] = x;
  const bits = u32[0] as number;
  if (Number.isNaN(x)) return ((bits >>> 16) | 0x40) & 0xffff;
  const down = bits >>> 16; // truncation: toward zero
  const up = down + 1; // away from zero
  u32[0] = (down << 16) >>> 0;
  const dv = f32[0] as number;
  u32[0] = (up << 16) >>> 0;
  const uv = f32[0] as number;
  const dd = Math.abs(x - dv);
  const du = Math.abs(uv - x);
  if (dd < du) return down;
  if (du < dd) return up & 0xffff;
  return (down & 1) === 0 ? down : up & 0xffff;
}

const h16 = new Float16Array(1);
const hbits = new Uint16Array(h16.buffer);

/** f16 bits of `x`, by the runtime's own Float16Array conversion. */
export function refF16(x: number): number {
  h16[0] = x;
  return hbits[0] as number;
}

/** Reads the element bits of an output row: u32 for F32, u16 for F16/BF16. */
export function encodeRef(values: readonly number[], dtype: FloatDType): number[] {
  if (dtype === "F32") {
    return values.map((v) => {
      f32[0] = v;
      return u32[0] as number;
    });
  }
  return values.map(dtype === "F16" ? refF16 : refBf16);
}

/** The expected row for one (module, layer): A, then B·scale (halves swapped when `swapHalves`), then zeros. */
export function expectedRow(
  a: Float32Array,
  b: Float32Array,
  scale: number,
  dtype: FloatDType,
  rowLength: number,
  swapHalves = false,
): number[] {
  const s = Math.fround(scale);
  let bScaled = Array.from(b, (x) => Math.fround(x * s));
  if (swapHalves) {
    const half = bScaled.length / 2;
    bScaled = [...bScaled.slice(half), ...bScaled.slice(0, half)];
  }
  const values = [...a, ...bScaled];
  return [...encodeRef(values, dtype), ...new Array(rowLength - values.length).fill(0)];
}

/** Row `i` of a weights tensor as element bits. */
export function rowBits(weights: Float32Array | Uint16Array, i: number, rowLength: number): number[] {
  const row = weights.subarray(i * rowLength, (i + 1) * rowLength);
  return row instanceof Float32Array
    ? Array.from(new Uint32Array(row.buffer, row.byteOffset, row.length))
    : Array.from(row);
}
