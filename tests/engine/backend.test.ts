/**
 * Choosing the backend for a model dir, and the TensorRT-LLM engine's creation as far as it runs without
 * TensorRT-LLM: the engine config read, a missing shim library refused with the way to get it, and every
 * `mlr_trtllm_params` field as it reaches C (through a stand-in mlr_trtllm_create that echoes them).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chooseBackend, openEngine } from "../../src/engine/backend.ts";
import { writeDemoModel } from "../../src/engine/demo-model.ts";
import { TrtllmEngine } from "../../src/engine/trtllm-engine.ts";
import { resolveTrtllmWorker } from "../../src/engine/trtllm-worker.ts";
import { readBaseModel } from "../../src/formats/model-config.ts";

const ROOT = join(import.meta.dir, "../..");
const ENGINE = join(import.meta.dir, "fixtures/trtllm-llama31-8b-tp2");
const work = mkdtempSync(join(tmpdir(), "multilora-backend-"));
const demo = join(work, "demo");
const echoLibrary = join(work, "libmultilora-echo.so");
/** A fake tensorrt_llm package dir holding bin/executorWorker, as the wheel does. */
const fakeTrtllm = join(work, "site-packages/tensorrt_llm");
const fakeWorker = join(fakeTrtllm, "bin/executorWorker");

beforeAll(() => {
  writeDemoModel(demo);
  mkdirSync(join(fakeTrtllm, "bin"), { recursive: true });
  writeFileSync(fakeWorker, "#!/bin/sh\n");
  chmodSync(fakeWorker, 0o755);
  const sources = readdirSync(join(ROOT, "ffi/cpu"))
    .filter((f) => f.endsWith(".c") && f !== "trtllm_absent.c")
    .map((f) => join(ROOT, "ffi/cpu", f))
    .concat(
      readdirSync(join(ROOT, "ffi/common"))
        .filter((f) => f.endsWith(".c"))
        .map((f) => join(ROOT, "ffi/common", f)),
    );
  const cc = spawnSync(
    "cc",
    ["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-pthread", "-fPIC", "-shared", "-O0", "-Wall", "-Werror"]
      .concat(["-I", join(ROOT, "ffi/include"), ...sources, join(import.meta.dir, "trtllm-params-echo.c")])
      .concat(["-lm", "-o", echoLibrary]),
    { encoding: "utf8" },
  );
  if (cc.status !== 0) throw new Error(cc.stderr);
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

function withEnv<T>(name: string, value: string | undefined, run: () => T): T {
  const saved = process.env[name];
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
  try {
    return run();
  } finally {
    if (saved === undefined) delete process.env[name];
    else process.env[name] = saved;
  }
}

/** The fixture is a 2-GPU engine: its worker is found through TRTLLM_ROOT, as the Docker image's. */
function withLibrary<T>(path: string | undefined, run: () => T): T {
  return withEnv("TRTLLM_ROOT", fakeTrtllm, () => withEnv("MULTILORA_TRTLLM_LIB", path, run));
}

function createError(
  options: Parameters<typeof TrtllmEngine.create>[1],
  library: string | undefined,
): string {
  try {
    withLibrary(library, () => TrtllmEngine.create(ENGINE, options));
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error("TrtllmEngine.create succeeded without TensorRT-LLM");
}

describe("choosing the backend", () => {
  test("auto: TensorRT-LLM for a trtllm-build dir, the CPU engine for a Hugging Face checkpoint", () => {
    expect(chooseBackend(ENGINE, "auto")).toBe("trtllm");
    expect(chooseBackend(demo, "auto")).toBe("cpu");
    expect(chooseBackend(demo, "cpu")).toBe("cpu");
    expect(chooseBackend(ENGINE, "trtllm")).toBe("trtllm");
  });

  test("openEngine opens a checkpoint on the CPU engine and says what it opened", async () => {
    const opened = openEngine(demo, "auto", { cpu: { threads: 1, maxBatch: 2 } });
    try {
      expect(opened.backend).toBe("cpu");
      expect(opened.modelType).toBe("llama");
      expect(opened.dims).toEqual(readBaseModel(demo).dims);
      expect(opened.engineConfig).toBeUndefined();
      expect(opened.engine.capabilities.loraPin).toBe(true);
    } finally {
      await opened.engine.close();
    }
  });

  test("a forced backend that cannot run the dir is refused with the reason", () => {
    expect(() => chooseBackend(ENGINE, "cpu")).toThrow(/is a TensorRT-LLM engine .*--backend trtllm/);
    expect(() => chooseBackend(demo, "trtllm")).toThrow(/is not a trtllm-build engine dir/);
  });

  test("the engine config: dims, LoRA limits, batch and sequence limits, world size from the mapping", () => {
    const m = readBaseModel(ENGINE);
    expect(m.kind).toBe("trtllm-engine");
    expect(m.dims).toEqual({
      hidden: 4096,
      intermediate: 14336,
      layers: 32,
      heads: 32,
      kvHeads: 8,
      headDim: 128,
    });
    expect(m.engine).toMatchObject({
      dtype: "BF16",
      loraPlugin: true,
      maxLoraRank: 64,
      maxBatchSize: 64,
      maxSeqLen: 8192,
      maxNumTokens: 8192,
      vocabSize: 128256,
      worldSize: 2,
      gatherGenerationLogits: false,
    });
    expect(m.engine?.targetModules).toHaveLength(7);
  });
});

describe("the TensorRT-LLM engine without TensorRT-LLM", () => {
  test("a missing shim library is a clear error naming the path and how to get it", () => {
    const message = createError({}, join(work, "no-such-lib.so"));
    expect(message).toContain(
      "is a TensorRT-LLM engine, but the TensorRT-LLM backend library is not installed",
    );
    expect(message).toContain(join(work, "no-such-lib.so"));
    expect(message).toContain("ffi/trtllm/README.md");
  });

  test("the CPU library in its place says it is the wrong library", () => {
    const message = createError({}, join(ROOT, "build/libmultilora.so"));
    expect(message).toContain(
      "this is the CPU engine library; TensorRT-LLM engines need libmultilora-trtllm.so",
    );
  });

  test("defaults: executor settings left to TensorRT-LLM (negative) but KV block reuse on, engine values from config.json", () => {
    const message = createError({}, echoLibrary);
    expect(message).toContain(
      `engine_dir=${ENGINE} engine_dtype=2 max_lora_rank=64 num_layers=32 num_lora_modules=7 world_size=2 ` +
        "max_batch_size=-1 max_num_tokens=-1 gather_generation_logits=0 kv_cache_free_gpu_mem_fraction=-1 " +
        "kv_cache_reuse=1 lora_host_cache_bytes=-1 lora_device_cache_percent=-1 lora_optimal_adapter_size=-1 " +
        `lora_max_adapter_size=-1 max_loras=0 worker_path=${fakeWorker}`,
    );
  });

  test("serve's settings arrive field by field", () => {
    const message = createError(
      {
        maxBatch: 16,
        kvCacheFreeGpuMemFraction: 0.85,
        kvCacheReuse: true,
        loraHostCacheBytes: 1024 * 1024 * 1024,
        loraDeviceCachePercent: 0.05,
        loraOptimalAdapterSize: 8,
        loraMaxAdapterSize: 64,
        maxLoras: 4,
        workerPath: fakeWorker,
      },
      echoLibrary,
    );
    expect(message).toContain(
      "max_batch_size=16 max_num_tokens=-1 gather_generation_logits=0 kv_cache_free_gpu_mem_fraction=0.85 " +
        "kv_cache_reuse=1 lora_host_cache_bytes=1073741824 lora_device_cache_percent=0.05 " +
        `lora_optimal_adapter_size=8 lora_max_adapter_size=64 max_loras=4 worker_path=${fakeWorker}`,
    );
    expect(createError({ kvCacheReuse: false }, echoLibrary)).toContain("kv_cache_reuse=0");
  });

  test("a multi-GPU engine without a resolvable executorWorker is refused before the executor starts", () => {
    const noRoot = () => undefined;
    expect(() => resolveTrtllmWorker(2, undefined, {}, noRoot)).toThrow(
      /runs on 2 GPUs.*executorWorker.*--trtllm-worker/,
    );
    expect(() => resolveTrtllmWorker(2, undefined, { TRTLLM_ROOT: work }, noRoot)).toThrow(
      `looked at ${join(work, "bin/executorWorker")}`,
    );
    expect(() => resolveTrtllmWorker(2, join(work, "nope"), {}, noRoot)).toThrow("no such file");
    expect(resolveTrtllmWorker(2, undefined, {}, () => fakeTrtllm)).toBe(fakeWorker);
    expect(resolveTrtllmWorker(2, undefined, { TRTLLM_ROOT: fakeTrtllm }, noRoot)).toBe(fakeWorker);
    expect(resolveTrtllmWorker(1, undefined, {}, noRoot)).toBeUndefined();
  });

  test("`multilora serve <engine-dir>` without the shim exits with the error, not a crash", () => {
    const r = spawnSync(process.execPath, [join(ROOT, "src/cli.ts"), "serve", ENGINE, "--port", "0"], {
      encoding: "utf8",
      env: { ...process.env, MULTILORA_TRTLLM_LIB: join(work, "missing.so") },
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("error: ");
    expect(r.stderr).toContain("the TensorRT-LLM backend library is not installed");
    const forced = spawnSync(
      process.execPath,
      [join(ROOT, "src/cli.ts"), "serve", demo, "--backend", "trtllm"],
      {
        encoding: "utf8",
      },
    );
    expect(forced.status).toBe(1);
    expect(forced.stderr).toContain("is not a trtllm-build engine dir");
  });
});
