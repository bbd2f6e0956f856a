import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { nativeCastFloats, nativeLibraryPath, nativeLibraryStatus } from "../../src/engine/native.ts";
import { castFloats, type FloatDType, type FloatSource } from "../../src/formats/dtypes.ts";
import { rng } from "../helpers/peft.ts";

const ROOT = join(import.meta.dir, "../..");
const DTYPES: FloatDType[] = ["F32", "F16", "BF16"];

/** Values that exercise every rounding path: specials, subnormals of each type, ties, overflow. */
function awkwardF32(n: number, seed: number): Float32Array {
  const random = rng(seed);
  const out = new Float32Array(n);
  const bits = new Uint32Array(out.buffer);
  const specials = [
    0,
    -0,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    Number.NEGATIVE_INFINITY,
    65504,
    65520,
    2 ** -24,
    2 ** -25,
    3 * 2 ** -25,
    1e-40,
    3.4e38,
  ];
  for (let i = 0; i < n; i++) {
    const pick = random();
    if (pick < 0.1) out[i] = specials[i % specials.length] as number;
    else if (pick < 0.4)
      bits[i] = Math.floor(random() * 2 ** 32); // any pattern, NaN payloads included
    else if (pick < 0.6)
      bits[i] = ((Math.floor(random() * 2 ** 16) << 16) | 0x8000) >>> 0; // bf16 ties
    else if (pick < 0.7)
      bits[i] = ((Math.floor(random() * 2 ** 19) << 13) | 0x1000) >>> 0; // f16 ties
    else out[i] = (random() - 0.5) * 2 ** Math.floor(random() * 60 - 30);
  }
  return out;
}

function source(dtype: FloatDType, values: Float32Array): FloatSource {
  if (dtype === "F32") return { dtype, data: values };
  const data = new Uint16Array(values.length);
  castFloats({ dtype: "F32", data: values }, 0, values.length, 1, dtype, new Uint8Array(data.buffer));
  return { dtype, data };
}

describe("the native library", () => {
  test("is built by the install step and loads", () => {
    expect(existsSync(nativeLibraryPath())).toBe(true);
    expect(nativeLibraryStatus()).toBe(`loaded from ${nativeLibraryPath()}`);
  });

  test("mlr_cast_floats equals the TypeScript conversion bit for bit, for every dtype pair and scale", () => {
    const native = nativeCastFloats();
    expect(native).toBeDefined();
    if (!native) return;
    let compared = 0;
    for (const from of DTYPES) {
      for (const to of DTYPES) {
        for (const scale of [1, 0.37, 3000, 1 / 3]) {
          const src = source(from, awkwardF32(20000, compared + 1));
          const size = to === "F32" ? 4 : 2;
          // Odd offsets on both sides: the kernel must not assume alignment.
          const start = 3;
          const count = 19000;
          const viaTs = new Uint8Array((count + 1) * size);
          const viaC = new Uint8Array((count + 1) * size);
          const badTs = castFloats(src, start, count, scale, to, viaTs.subarray(size));
          const badC = native(src, start, count, scale, to, viaC.subarray(size));
          expect({ from, to, scale, bad: badC }).toEqual({ from, to, scale, bad: badTs });
          expect(Buffer.compare(viaC, viaTs)).toBe(0);
          expect(viaC.subarray(0, size).every((b) => b === 0)).toBe(true);
          compared++;
        }
      }
    }
    expect(compared).toBe(36);
  });

  test("F64 sources are left to TypeScript", () => {
    const native = nativeCastFloats();
    expect(native?.({ dtype: "F64", data: new Float64Array(4) }, 0, 4, 1, "F32", new Uint8Array(16))).toBe(
      -1,
    );
  });
});

const sanitizerLibs = ["libasan.so", "libubsan.so"].map(
  (lib) => spawnSync("gcc", [`-print-file-name=${lib}`], { encoding: "utf8" }).stdout?.trim() ?? "",
);
const haveSanitizers = sanitizerLibs.every((p) => p.startsWith("/") && existsSync(p));
if (!haveSanitizers)
  console.warn(
    "notice: gcc's libasan/libubsan not found; the sanitizer run of the native library is skipped",
  );

test.skipIf(!haveSanitizers || process.env.MULTILORA_SANITIZED === "1")(
  "the native library (kernels, the whole CPU engine, output constraints, and a full server over it) runs clean under AddressSanitizer and UndefinedBehaviorSanitizer",
  () => {
    const build = spawnSync("make", ["-s", "-C", join(ROOT, "ffi"), "asan"], { encoding: "utf8" });
    expect(build.stderr).toBe("");
    expect(build.status).toBe(0);
    const files = [
      ...[
        "native",
        "abi-layout",
        // the weights read in place or copied by the engine (--model-memory)
        "checkpoint",
        "cpu-engine",
        "lora-cache",
        "scheduling",
        "step-failures",
        // the matrix kernels of every path this CPU runs, against float64 and batch invariance
        "kernels",
        // output constraints: the matcher's masks and accepts, and constrained requests in the engine
        "constraint-native",
        "constraint-engine",
        // logit_bias in the sampler, alone, in batches and under constraints
        "logit-bias",
        // prefix (KV) reuse: blocks stored, found, copied and evicted
        "prefix-cache",
      ].map((f) => join(import.meta.dir, `${f}.test.ts`)),
      // the mask code over the whole JSON Schema Test Suite (skips without ../shared/fixtures)
      join(import.meta.dir, "../structured/json-schema-suite.test.ts"),
      // A full server: HTTP, the adapter registry and cache, streaming and cancels over the sanitized engine.
      join(import.meta.dir, "../server/e2e.test.ts"),
      join(import.meta.dir, "../server/lora-rules.test.ts"),
    ];
    const run = spawnSync(process.execPath, ["test", ...files], {
      cwd: ROOT,
      encoding: "utf8",
      env: {
        ...process.env,
        MULTILORA_SANITIZED: "1",
        MULTILORA_LIB: join(ROOT, "build/libmultilora-asan.so"),
        LD_PRELOAD: sanitizerLibs.join(" "),
        ASAN_OPTIONS: "detect_leaks=0:abort_on_error=1",
        UBSAN_OPTIONS: "halt_on_error=1:print_stacktrace=1",
      },
    });
    const output = `${run.stdout}\n${run.stderr}`;
    expect(output).not.toMatch(/ERROR: AddressSanitizer|runtime error:/);
    expect(output).toMatch(/\n 0 fail\n/);
    expect(output).toMatch(/Ran \d+ tests across 15 files/);
    expect(run.status).toBe(0);
  },
  300_000,
);
