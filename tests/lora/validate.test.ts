import { describe, expect, test } from "bun:test";
import type { BaseModel } from "../../src/formats/model-config.ts";
import { checkAgainstBase, formatLayers } from "../../src/lora/validate.ts";

const dims = { hidden: 64, intermediate: 96, layers: 4, heads: 4, kvHeads: 2, headDim: 16 };
const hf: BaseModel = { path: "/m/config.json", kind: "huggingface", architecture: "LlamaForCausalLM", dims };

describe("checks against a base model", () => {
  test("layer lists read as ranges", () => {
    expect(formatLayers([3])).toBe("layer 3");
    expect(formatLayers([0, 1, 2, 3, 7, 9, 10])).toBe("layers 0-3, 7, 9-10");
    expect(formatLayers([2, 1, 1, 0])).toBe("layers 0-2");
  });

  test("rows that fit produce no problem", () => {
    const rows = [
      { module: "attn_q" as const, layer: 0, rank: 4, in: 64, out: 64 },
      { module: "attn_k" as const, layer: 3, rank: 4, in: 64, out: 32 },
      { module: "mlp_4h_to_h" as const, layer: 1, rank: 8, in: 96, out: 64 },
    ];
    expect(checkAgainstBase(rows, hf, "F32")).toEqual([]);
  });

  test("a row of a TensorRT-LLM file whose rank needs more than R values is named", () => {
    const problems = checkAgainstBase([{ module: "mlp_gate", layer: 0, rank: 4 }], hf, "BF16", 4 * 100);
    expect(problems).toEqual(["mlp_gate (layer 0): rank 4 needs 640 values per row but rows hold 400"]);
  });

  test("modules a Llama-family model lacks are named", () => {
    expect(checkAgainstBase([{ module: "moe_router", layer: 0, rank: 2 }], hf, "F32")).toEqual([
      "moe_router (layer 0): moe_router does not exist in a Llama-family model",
    ]);
  });
});
