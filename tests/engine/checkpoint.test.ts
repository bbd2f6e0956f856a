/** Opening Hugging Face checkpoints: single file or shards, what each architecture allows, clear refusals. */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadCheckpoint } from "../../src/engine/checkpoint.ts";
import { writeLlamaCheckpoint } from "../../src/engine/random-checkpoint.ts";
import { readSafetensors } from "../../src/formats/safetensors-reader.ts";
import { writeSafetensors } from "../../src/formats/safetensors-writer.ts";
import { openEngine, tinySpec } from "../helpers/engine.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-checkpoint-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const SPEC = tinySpec(21);

function patchConfig(dir: string, patch: Record<string, unknown>): void {
  const path = join(dir, "config.json");
  writeFileSync(path, JSON.stringify({ ...JSON.parse(readFileSync(path, "utf8")), ...patch }));
}

describe("checkpoints", () => {
  test("a sharded checkpoint (model.safetensors.index.json) gives exactly the single file's logits", async () => {
    const single = writeLlamaCheckpoint(join(work, "single"), SPEC);
    const sharded = join(work, "sharded");
    writeLlamaCheckpoint(sharded, SPEC);
    const file = readSafetensors(join(sharded, "model.safetensors"));
    const names = file.names;
    const halves = [names.slice(0, names.length / 2), names.slice(names.length / 2)];
    const weightMap: Record<string, string> = {};
    halves.forEach((part, i) => {
      const shard = `model-0000${i + 1}-of-00002.safetensors`;
      writeSafetensors(
        join(sharded, shard),
        part.map((name) => ({ ...file.info(name), data: file.rawBytes(name) })),
      );
      for (const name of part) weightMap[name] = shard;
    });
    rmSync(join(sharded, "model.safetensors"));
    writeFileSync(
      join(sharded, "model.safetensors.index.json"),
      JSON.stringify({ metadata: {}, weight_map: weightMap }),
    );
    const checkpoint = loadCheckpoint(sharded);
    expect(checkpoint.files.length).toBe(2);
    const a = openEngine(single.dir);
    const b = openEngine(sharded);
    try {
      expect(b.forwardLogits([1, 2, 3])).toEqual(a.forwardLogits([1, 2, 3]));
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("weights are mapped, not read: the tensors view the mapped files", () => {
    const c = loadCheckpoint(writeLlamaCheckpoint(join(work, "mapped"), SPEC).dir);
    const file = c.files[0];
    expect(c.tensors.every((t) => t.data.buffer === file?.bytes.buffer)).toBe(true);
    expect(c.bytes).toBe(file?.bytes.length as number);
  });

  test("Mistral's sliding window caps the sequence length the engine accepts", async () => {
    const dir = writeLlamaCheckpoint(join(work, "mistral"), {
      ...SPEC,
      architecture: "MistralForCausalLM",
    }).dir;
    patchConfig(dir, { sliding_window: 48 });
    const c = loadCheckpoint(dir);
    expect(c.maxSequence).toBe(48);
    const engine = openEngine(dir);
    try {
      expect(engine.maxSeqLen).toBe(48);
      expect(() => engine.enqueue({ prompt: [1, 2], maxNewTokens: 47 })).toThrow(/exceeds max_seq_len 48/);
    } finally {
      await engine.close();
    }
    expect(() => openEngine(dir, { maxSeqLen: 64 })).toThrow(
      /max sequence length 64 exceeds what .* supports \(48\)/,
    );
  });

  test("Llama's attention_bias (a bias on o_proj as well) and an integer weight are refused by name", () => {
    const dir = writeLlamaCheckpoint(join(work, "bias"), SPEC).dir;
    patchConfig(dir, { attention_bias: true, mlp_bias: true });
    expect(() => loadCheckpoint(dir)).toThrow(
      /mlp_bias: true is not supported\n {2}- attention_bias: true \(a bias on o_proj too\) is not supported/,
    );
    const ints = writeLlamaCheckpoint(join(work, "ints"), SPEC).dir;
    const file = readSafetensors(join(ints, "model.safetensors"));
    writeSafetensors(
      join(ints, "model.safetensors"),
      file.names.map((name) =>
        name === "model.norm.weight"
          ? { name, dtype: "I32" as const, shape: [64], data: new Int32Array(64) }
          : { ...file.info(name), data: file.rawBytes(name).slice() },
      ),
    );
    expect(() => loadCheckpoint(ints)).toThrow(
      /tensor "model.norm.weight" has dtype I32; weights must be F32, F16 or BF16/,
    );
  });

  test("a folder without weights or without config.json says what is missing", () => {
    const dir = writeLlamaCheckpoint(join(work, "noweights"), SPEC).dir;
    rmSync(join(dir, "model.safetensors"));
    expect(() => loadCheckpoint(dir)).toThrow(
      /neither model.safetensors nor model.safetensors.index.json is there/,
    );
    expect(() => loadCheckpoint(join(work, "nothing"))).toThrow(
      /no config.json; give a Hugging Face model folder/,
    );
  });
});
