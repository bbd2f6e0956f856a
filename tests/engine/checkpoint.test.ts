/** Opening Hugging Face checkpoints: single file or shards, what each architecture allows, clear refusals. */
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadCheckpoint } from "../../src/engine/checkpoint.ts";
import { CpuEngine } from "../../src/engine/cpu-engine.ts";
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

describe("how the engine holds the weights (--model-memory)", () => {
  const cases = [
    { dtype: "BF16", tied: true }, // repacked into panels on the avx512 path; lm_head shares the embedding
    { dtype: "F32", tied: false },
  ] as const;
  for (const { dtype, tied } of cases) {
    test(`copy keeps the engine's own copy, so the file may change under it; map reads it in place (${dtype}${tied ? ", tied" : ""})`, async () => {
      const dir = writeLlamaCheckpoint(join(work, `memory-${dtype}`), { ...SPEC, dtype, tied }).dir;
      const copied = CpuEngine.create(loadCheckpoint(dir, { memory: "copy" }), { threads: 2 });
      const mapped = CpuEngine.create(loadCheckpoint(dir, { memory: "map" }), { threads: 2 });
      expect(copied.checkpoint).toMatchObject({ mapped: false, files: [] });
      expect(mapped.checkpoint.mapped).toBe(true);
      try {
        const prompt = [1, 5, 9, 33];
        const before = copied.forwardLogits(prompt);
        expect(mapped.forwardLogits(prompt)).toEqual(before);
        // Every weight byte rewritten in place, the header kept: what copying another checkpoint over it does.
        const file = join(dir, "model.safetensors");
        const size = readFileSync(file).length;
        const header = 8 + Number(readFileSync(file).readBigUInt64LE(0));
        const fd = openSync(file, "r+");
        writeSync(fd, Buffer.alloc(size - header, 0x3c), 0, size - header, header);
        closeSync(fd);
        expect(copied.forwardLogits(prompt)).toEqual(before);
        expect(mapped.forwardLogits(prompt)).not.toEqual(before);
      } finally {
        await copied.close();
        await mapped.close();
      }
    });
  }
});
