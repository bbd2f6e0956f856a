import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DType } from "../../src/formats/dtypes.ts";
import { readSafetensors } from "../../src/formats/safetensors-reader.ts";
import { writeSafetensors } from "../../src/formats/safetensors-writer.ts";
import { parseTrtllmAdapter } from "../../src/lora/trtllm-adapter.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-trt-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
let n = 0;

function file(
  rows: number[][],
  options: {
    rowLength?: number;
    dtype?: DType;
    weightsShape?: number[];
    configShape?: number[];
    fill?: number;
  } = {},
) {
  const rowLength = options.rowLength ?? 32;
  const weights = new Float32Array(rows.length * rowLength).fill(options.fill ?? 0.5);
  const path = join(work, `a${++n}.safetensors`);
  const width = rows[0]?.length ?? 3;
  writeSafetensors(path, [
    {
      name: "weights",
      dtype: options.dtype ?? "F32",
      shape: options.weightsShape ?? [rows.length, rowLength],
      data: options.dtype === "I32" ? new Int32Array(weights.length) : weights,
    },
    {
      name: "config",
      dtype: "I32",
      shape: options.configShape ?? [rows.length, width],
      data: new Int32Array(rows.flat()),
    },
  ]);
  return readSafetensors(path);
}

describe("TensorRT-LLM LoRA files", () => {
  test("rows come back with their module names, layers and ranks", () => {
    const a = parseTrtllmAdapter(
      file([
        [1, 0, 4],
        [3, 0, 4],
        [18, 2, 2],
      ]),
    );
    expect(a.dtype).toBe("F32");
    expect(a.rowLength).toBe(32);
    expect(a.rows).toEqual([
      { moduleId: 1, module: "attn_q", layer: 0, rank: 4 },
      { moduleId: 3, module: "attn_v", layer: 0, rank: 4 },
      { moduleId: 18, module: "mlp_gate_up", layer: 2, rank: 2 },
    ]);
  });

  test("llgtrt's [1, N, R] / [1, N, 3] layout is accepted", () => {
    const a = parseTrtllmAdapter(file([[1, 0, 4]], { weightsShape: [1, 1, 32], configShape: [1, 1, 3] }));
    expect(a.rows.length).toBe(1);
  });

  test("every problem is listed: unknown module, negative layer, rank too big, duplicate row, DoRA", () => {
    let message = "";
    try {
      parseTrtllmAdapter(
        file([
          [1, 0, 4, 0],
          [42, 0, 4, 0],
          [2, -1, 4, 0],
          [3, 0, 17, 0],
          [1, 0, 4, 0],
          [4, 0, 4, 1],
        ]),
      );
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toContain("is not a valid TensorRT-LLM LoRA adapter");
    expect(message).toContain("config row 1 [42, 0, 4]: unknown module id 42");
    expect(message).toContain("config row 2 [2, -1, 4]: negative layer index");
    expect(message).toContain("config row 3 [3, 0, 17]: rank 17 does not fit rows of 32 values");
    expect(message).toContain("config row 4 [1, 0, 4]: a second row for attn_q in layer 0");
    expect(message).toContain("config row 5 [4, 0, 4]: DoRA rows are not supported");
  });

  test("missing tensors, wrong dtypes, row-count mismatch and NaN weights are refused", () => {
    const path = join(work, "only-weights.safetensors");
    writeSafetensors(path, [{ name: "weights", dtype: "F32", shape: [1, 4], data: new Float32Array(4) }]);
    expect(() => parseTrtllmAdapter(readSafetensors(path))).toThrow(/no "config" tensor/);
    expect(() => parseTrtllmAdapter(file([[1, 0, 4]], { dtype: "I32" }))).toThrow(
      /"weights" has dtype I32; it must be F32, F16 or BF16/,
    );
    expect(() =>
      parseTrtllmAdapter(file([[1, 0, 4]], { configShape: [1, 3], weightsShape: [1, 32], rowLength: 32 })),
    ).not.toThrow();
    expect(() =>
      parseTrtllmAdapter(
        file(
          [
            [1, 0, 4],
            [2, 0, 4],
          ],
          { weightsShape: [1, 64] },
        ),
      ),
    ).toThrow(/"weights" has 1 rows but "config" has 2/);
    expect(() => parseTrtllmAdapter(file([[1, 0, 4]], { fill: Number.NaN }))).toThrow(
      /"weights" holds 32 NaN or Inf values/,
    );
  });
});
