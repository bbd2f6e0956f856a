/**
 * The native library (build/libmultilora.so, built from ffi/ by `npm ci`) and its bun:ffi symbols: the one
 * place that opens it. `MULTILORA_LIB` overrides its path (e.g. the AddressSanitizer build).
 *
 * When the library is absent (a checkout that skipped the build), callers fall back to TypeScript;
 * `nativeLibraryStatus()` says why it did not load.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { castFloats, FloatDType } from "../formats/dtypes.ts";

/** Mirrors `mlr_float_dtype` in ffi/include/multilora.h. */
export const MLR_DTYPE: Record<FloatDType, number> = { F32: 0, F16: 1, BF16: 2 };

const SYMBOLS = {
  mlr_cast_floats: {
    args: [FFIType.ptr, FFIType.i32, FFIType.u64, FFIType.f32, FFIType.ptr, FFIType.i32],
    returns: FFIType.u64,
  },
} as const;

type Library = ReturnType<typeof dlopen<typeof SYMBOLS>>;

export function nativeLibraryPath(): string {
  return process.env.MULTILORA_LIB ?? fileURLToPath(new URL("../../build/libmultilora.so", import.meta.url));
}

let loaded: { lib: Library } | { error: string } | undefined;

function load(): { lib: Library } | { error: string } {
  if (!loaded) {
    const path = nativeLibraryPath();
    try {
      if (!existsSync(path))
        throw new Error(`${path} does not exist (build it with \`make -C ffi\` or \`npm ci\`)`);
      loaded = { lib: dlopen(path, SYMBOLS) };
    } catch (e) {
      loaded = { error: (e as Error).message };
    }
  }
  return loaded;
}

/** "loaded from <path>", or why the library could not be loaded. */
export function nativeLibraryStatus(): string {
  const l = load();
  return "lib" in l ? `loaded from ${nativeLibraryPath()}` : l.error;
}

export type CastFloats = typeof castFloats;

/**
 * The native `mlr_cast_floats` with the signature of `castFloats` in src/formats/dtypes.ts (which it
 * must match bit for bit), or undefined when the library is not available. F64 sources are not handled
 * natively; the returned function reports that by returning -1.
 */
export function nativeCastFloats(): CastFloats | undefined {
  const l = load();
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
