import { afterAll, expect, test } from "bun:test";
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEMO_PRESETS, writeDemoModel } from "../../src/engine/demo-model.ts";
import { listProblems, type MultiloraError } from "../../src/errors.ts";
import { readBaseModel } from "../../src/formats/model-config.ts";
import { writeSafetensors } from "../../src/formats/safetensors-writer.ts";
import { trimCache } from "../../src/lora/converted-cache.ts";
import { AdapterInvalidError } from "../../src/lora/invalid-adapter.ts";
import { LoraRegistry } from "../../src/lora/registry.ts";
import { writeEngineConfig, writePeftAdapter } from "../helpers/peft.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-registry-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

test("the converted-adapter cache keeps its size under the cap, removing the least recently used first", () => {
  const dir = join(work, "peft");
  mkdirSync(dir);
  ["a", "b", "c", "d"].forEach((name, i) => {
    const path = join(dir, `${name}.safetensors`);
    writeFileSync(path, new Uint8Array(1000));
    utimesSync(path, new Date(1000 * (i + 1)), new Date(1000 * (i + 1)));
  });
  // a is the oldest but is the file just written: it stays; b and c go.
  trimCache(dir, 2000, join(dir, "a.safetensors"));
  expect(readdirSync(dir).sort()).toEqual(["a.safetensors", "d.safetensors"]);
});

test("against a TensorRT-LLM engine, adapters are checked for its lora_target_modules, rank and plugin before anything is sent", async () => {
  const demo = writeDemoModel(join(work, "engine-demo"));
  const { hidden, intermediate, layers, heads, kvHeads, headDim } = DEMO_PRESETS.tiny;
  const dims = { hidden, intermediate, layers, heads, kvHeads, headDim };
  const registryFor = (name: string, lora: Parameters<typeof writeEngineConfig>[2]) => {
    const engine = readBaseModel(writeEngineConfig(join(work, name), dims, lora));
    const requirements = { dims, modelPath: engine.path, dtype: "BF16" as const, maxRank: 64, engine };
    return new LoraRegistry({ dir: demo.loraDir, cacheDir: join(work, `${name}-cache`), requirements });
  };

  const attentionOnly = registryFor("engine-attn", {
    targetModules: ["attn_q", "attn_k", "attn_v", "attn_dense"],
  });
  expect(await attentionOnly.validate("demo-attention")).toEqual({ problems: [], warnings: [] });
  const all = await attentionOnly.validate("demo-all");
  expect(all.problems).toEqual([
    "mlp_h_to_4h (layers 0-3): not among the engine's lora_target_modules [attn_q, attn_k, attn_v, attn_dense]",
    "mlp_gate (layers 0-3): not among the engine's lora_target_modules [attn_q, attn_k, attn_v, attn_dense]",
    "mlp_4h_to_h (layers 0-3): not among the engine's lora_target_modules [attn_q, attn_k, attn_v, attn_dense]",
  ]);

  const rank4 = registryFor("engine-rank4", { maxLoraRank: 4 });
  expect((await rank4.validate("demo-attention")).problems).toEqual([
    "attn_q (layers 0-3): rank 8 exceeds the engine's max_lora_rank 4",
    "attn_v (layers 0-3): rank 8 exceeds the engine's max_lora_rank 4",
  ]);
  const noPlugin = registryFor("engine-noplugin", { plugin: null });
  expect((await noPlugin.validate("demo-attention")).problems).toEqual([
    `${join(work, "engine-noplugin", "config.json")}: the engine was built without the LoRA plugin (trtllm-build --lora_plugin ...)`,
  ]);
});

test("host copies stay under the cap: a dropped one is read again from disk (same bytes), and a file changed since is a 409", async () => {
  const demo = writeDemoModel(join(work, "host-copies"));
  const { hidden, intermediate, layers, heads, kvHeads, headDim } = DEMO_PRESETS.tiny;
  const requirements = {
    dims: { hidden, intermediate, layers, heads, kvHeads, headDim },
    modelPath: join(demo.dir, "config.json"),
    dtype: "BF16" as const,
    maxRank: 64,
  };
  // A cap of one byte keeps only the newest copy.
  const registry = new LoraRegistry({
    dir: demo.loraDir,
    cacheDir: join(work, "host-cache"),
    requirements,
    hostMaxBytes: 1,
  });
  const attention = await registry.get("demo-attention");
  const first = await registry.weights(attention);
  const original = Uint8Array.from(first.weights?.bytes ?? []);
  expect(original.length).toBeGreaterThan(0);
  expect(registry.rereads).toBe(0);

  await registry.get("demo-all"); // drops demo-attention's copy
  const again = await registry.weights(attention);
  expect(registry.rereads).toBe(1);
  expect(again.weights?.bytes).not.toBe(first.weights?.bytes); // a fresh copy...
  expect(Uint8Array.from(again.weights?.bytes ?? [])).toEqual(original); // ...of the same bytes
  expect(Array.from(again.config ?? [])).toEqual(Array.from(first.config ?? []));
  expect(again.taskId).toBe(attention.taskId);
  await registry.weights(attention); // now the newest copy: no read
  expect(registry.rereads).toBe(1);

  await registry.weights(await registry.get("demo-all")); // drops it again, then the file changes under it
  const spare = writeDemoModel(join(work, "host-copies-spare"), { seed: 42 });
  copyFileSync(
    join(spare.loraDir, "demo-attention.safetensors"),
    join(demo.loraDir, "demo-attention.safetensors"),
  );
  const changed = await registry.weights(attention).then(
    () => undefined,
    (e: MultiloraError) => e,
  );
  expect(changed?.code).toBe("lora_changed");
  expect(changed?.message).toContain('adapter "demo-attention" changed on disk');
});

test("a PEFT adapter's dropped weights are converted again when the converted file was trimmed too: same bytes, same task id", async () => {
  const demo = writeDemoModel(join(work, "peft-copies"));
  const { hidden, intermediate, layers, heads, kvHeads, headDim } = DEMO_PRESETS.tiny;
  const dims = { hidden, intermediate, layers, heads, kvHeads, headDim };
  writePeftAdapter(join(demo.loraDir, "peft"), { dims, modules: ["q_proj", "v_proj"], rank: 4 });
  const cacheDir = join(work, "peft-copies-cache");
  const registry = new LoraRegistry({
    dir: demo.loraDir,
    cacheDir,
    requirements: { dims, modelPath: join(demo.dir, "config.json"), dtype: "BF16", maxRank: 64 },
    hostMaxBytes: 1,
  });
  const peft = await registry.get("peft");
  const original = Uint8Array.from((await registry.weights(peft)).weights?.bytes ?? []);
  await registry.get("demo-all"); // drops the PEFT adapter's copy
  rmSync(join(cacheDir, "peft"), { recursive: true });
  const again = await registry.weights(peft);
  expect(registry.rereads).toBe(1);
  expect(again.taskId).toBe(peft.taskId);
  expect(Uint8Array.from(again.weights?.bytes ?? [])).toEqual(original);
  expect(readdirSync(join(cacheDir, "peft"))).toHaveLength(1);
  registry.close();
});

test("an invalid adapter's error carries its problems, and validate() answers with them", async () => {
  const demo = writeDemoModel(join(work, "problems"));
  const { hidden, intermediate, layers, heads, kvHeads, headDim } = DEMO_PRESETS.tiny;
  const dims = { hidden, intermediate, layers, heads, kvHeads, headDim };
  const registry = new LoraRegistry({
    dir: demo.loraDir,
    cacheDir: join(work, "problems-cache"),
    requirements: { dims, modelPath: join(demo.dir, "config.json"), dtype: "F16", maxRank: 4 },
  });
  const failure = (name: string) =>
    registry.get(name).then(
      () => undefined,
      (e: unknown) => e,
    );

  // The served model's checks.
  const misfit = await failure("demo-attention");
  expect(misfit).toBeInstanceOf(AdapterInvalidError);
  const problems = [
    "the weights are bfloat16 but this engine needs float16 (multilora extract -t float16)",
    "rank 8 exceeds max_lora_rank 4",
  ];
  expect(misfit).toMatchObject({ code: "invalid_lora", param: "lora_model", problems });
  expect((misfit as Error).message).toBe(
    listProblems('adapter "demo-attention" does not fit the served model:', problems),
  );
  expect(await registry.validate("demo-attention")).toEqual({ problems, warnings: [] });

  // The TensorRT-LLM file's own checks.
  const path = join(demo.loraDir, "no-config.safetensors");
  writeSafetensors(path, [{ name: "weights", dtype: "F16", shape: [1, 4], data: new Uint8Array(8) }]);
  expect(await failure("no-config")).toMatchObject({
    code: "invalid_lora",
    problems: ['no "config" tensor'],
  });
  expect(await registry.validate("no-config")).toEqual({ problems: ['no "config" tensor'], warnings: [] });

  // A file that is not safetensors at all: its one problem is the reader's message.
  writeFileSync(join(demo.loraDir, "garbage.safetensors"), "not a safetensors file");
  const garbage = await failure("garbage");
  expect(garbage).toBeInstanceOf(AdapterInvalidError);
  expect((garbage as AdapterInvalidError).problems).toEqual([(garbage as Error).message]);
  expect((await registry.validate("garbage")).problems).toEqual([(garbage as Error).message]);

  // A PEFT folder that cannot be converted.
  writePeftAdapter(join(demo.loraDir, "nan-peft"), {
    dims,
    modules: ["q_proj"],
    rank: 2,
    edit: (name, values) => {
      if (name.includes("layers.1.")) values[0] = Number.NaN;
    },
  });
  const nan = await failure("nan-peft");
  expect(nan).toMatchObject({ code: "invalid_lora", param: "lora_model" });
  const nanProblems = (nan as AdapterInvalidError).problems;
  expect(nanProblems).toHaveLength(1);
  expect(nanProblems[0]).toContain("NaN");
  expect((nan as Error).message).toStartWith('adapter "nan-peft": ');
  expect((await registry.validate("nan-peft")).problems).toEqual([...nanProblems]);

  // A bad or unknown name is the request's error, not a problem of an adapter.
  await expect(registry.validate("nope")).rejects.toMatchObject({ code: "lora_not_found" });
  await expect(registry.validate("../x")).rejects.toMatchObject({ code: "invalid_lora_name" });
  registry.close();
});
