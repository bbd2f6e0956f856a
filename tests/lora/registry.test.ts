import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEMO_PRESETS, writeDemoModel } from "../../src/engine/demo-model.ts";
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
