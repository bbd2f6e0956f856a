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
import type { MultiloraError } from "../../src/errors.ts";
import { readBaseModel } from "../../src/formats/model-config.ts";
import { LoraRegistry, trimCache } from "../../src/lora/registry.ts";
import { writeEngineConfig } from "../helpers/peft.ts";

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
    return new LoraRegistry(demo.loraDir, join(work, `${name}-cache`), requirements);
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
  const registry = new LoraRegistry(
    demo.loraDir,
    join(work, "host-cache"),
    requirements,
    undefined,
    undefined,
    1,
  );
  const attention = await registry.get("demo-attention");
  const first = await attention.weights();
  const original = Uint8Array.from(first.weights?.bytes ?? []);
  expect(original.length).toBeGreaterThan(0);
  expect(registry.rereads).toBe(0);

  await registry.get("demo-all"); // drops demo-attention's copy
  const again = await attention.weights();
  expect(registry.rereads).toBe(1);
  expect(again.weights?.bytes).not.toBe(first.weights?.bytes); // a fresh copy...
  expect(Uint8Array.from(again.weights?.bytes ?? [])).toEqual(original); // ...of the same bytes
  expect(Array.from(again.config ?? [])).toEqual(Array.from(first.config ?? []));
  expect(again.taskId).toBe(attention.taskId);
  await attention.weights(); // now the newest copy: no read
  expect(registry.rereads).toBe(1);

  await (await registry.get("demo-all")).weights(); // drops it again, then the file changes under it
  const spare = writeDemoModel(join(work, "host-copies-spare"), { seed: 42 });
  copyFileSync(
    join(spare.loraDir, "demo-attention.safetensors"),
    join(demo.loraDir, "demo-attention.safetensors"),
  );
  const changed = await attention.weights().then(
    () => undefined,
    (e: MultiloraError) => e,
  );
  expect(changed?.status).toBe(409);
  expect(changed?.code).toBe("lora_changed");
  expect(changed?.message).toContain('adapter "demo-attention" changed on disk');
});
