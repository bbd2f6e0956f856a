/**
 * A LoRA adapter in TensorRT-LLM's format (what `extract` writes and both engines read): a safetensors
 * file with `weights` [N, R] (float) and `config` [N, 3] or [N, 4] (int32 rows
 * [module_id, layer, rank(, is_dora)]). llgtrt's files carry a leading dimension of 1 on both; it is accepted.
 */

import type { LoraRef } from "../engine/engine.ts";
import { countNonFinite, type FloatDType, type FloatSource } from "../formats/dtypes.ts";
import { type ModuleName, moduleName } from "../formats/lora-modules.ts";
import { readSafetensors, type SafetensorsFile } from "../formats/safetensors-reader.ts";
import { type AdapterInvalidError, adapterProblems } from "./invalid-adapter.ts";

export interface TrtllmRow {
  moduleId: number;
  module: ModuleName;
  layer: number;
  rank: number;
}

export interface TrtllmAdapter {
  file: SafetensorsFile;
  dtype: FloatDType;
  rows: TrtllmRow[];
  /** R: values per row of `weights`. */
  rowLength: number;
}

/** Reads and checks the two tensors; one error lists every problem. */
export function parseTrtllmAdapter(file: SafetensorsFile): TrtllmAdapter {
  const problems: string[] = [];
  const weights = file.tensors.get("weights");
  const config = file.tensors.get("config");
  if (!weights) problems.push('no "weights" tensor');
  if (!config) problems.push('no "config" tensor');
  if (!weights || !config) throw invalid(file, problems);

  if (weights.dtype !== "F32" && weights.dtype !== "F16" && weights.dtype !== "BF16") {
    problems.push(`"weights" has dtype ${weights.dtype}; it must be F32, F16 or BF16`);
  }
  const wShape = dropLeadingOne(weights.shape);
  const cShape = dropLeadingOne(config.shape);
  if (wShape.length !== 2)
    problems.push(`"weights" has shape [${weights.shape.join(", ")}]; expected [N, R]`);
  if (config.dtype !== "I32") problems.push(`"config" has dtype ${config.dtype}; it must be I32`);
  if (cShape.length !== 2 || (cShape[1] !== 3 && cShape[1] !== 4)) {
    problems.push(`"config" has shape [${config.shape.join(", ")}]; expected [N, 3] or [N, 4]`);
  }
  if (problems.length > 0) throw invalid(file, problems);

  const [n, rowLength] = wShape as [number, number];
  const [configRows, configWidth] = cShape as [number, number];
  if (configRows !== n) problems.push(`"weights" has ${n} rows but "config" has ${configRows}`);
  if (n === 0) problems.push("the adapter has no rows");
  const table = file.view("config") as Int32Array;
  const rows: TrtllmRow[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < configRows; i++) {
    const [moduleId, layer, rank, isDora] = table.subarray(
      i * configWidth,
      (i + 1) * configWidth,
    ) as unknown as number[];
    const module = moduleName(moduleId as number);
    const where = `config row ${i} [${[moduleId, layer, rank].join(", ")}]`;
    if (module === undefined) problems.push(`${where}: unknown module id ${moduleId}`);
    if ((layer as number) < 0) problems.push(`${where}: negative layer index`);
    if ((rank as number) < 1 || 2 * (rank as number) > rowLength) {
      problems.push(`${where}: rank ${rank} does not fit rows of ${rowLength} values`);
    }
    if (configWidth === 4 && isDora !== 0) problems.push(`${where}: DoRA rows are not supported`);
    const key = `${moduleId}/${layer}`;
    if (seen.has(key)) problems.push(`${where}: a second row for ${module ?? moduleId} in layer ${layer}`);
    seen.add(key);
    if (module !== undefined)
      rows.push({ moduleId: moduleId as number, module, layer: layer as number, rank: rank as number });
  }
  const source = { dtype: weights.dtype, data: file.view("weights") } as FloatSource;
  const nonFinite = countNonFinite(source, 0, weights.length);
  if (nonFinite > 0) problems.push(`"weights" holds ${nonFinite} NaN or Inf values`);
  if (problems.length > 0) throw invalid(file, problems);
  return { file, dtype: weights.dtype as FloatDType, rows, rowLength };
}

function dropLeadingOne(shape: readonly number[]): readonly number[] {
  return shape.length === 3 && shape[0] === 1 ? shape.slice(1) : shape;
}

function invalid(file: SafetensorsFile, problems: string[]): AdapterInvalidError {
  return adapterProblems(`${file.path} is not a valid TensorRT-LLM LoRA adapter:`, problems, {
    code: "invalid_adapter",
  });
}

/** Reads and checks a TensorRT-LLM LoRA file, and wraps it for an engine request under `taskId`. */
export function readTrtllmLora(
  path: string,
  taskId: bigint,
  scale?: number,
): { adapter: TrtllmAdapter; lora: LoraRef } {
  const adapter = parseTrtllmAdapter(readSafetensors(path));
  return { adapter, lora: { ...loraRefOf(adapter, taskId), scale } };
}

/** The engine request's LoRA part over the adapter's tensors (views into its file's bytes, no copy). */
export function loraRefOf(adapter: TrtllmAdapter, taskId: bigint): LoraRef {
  const config = adapter.file.view("config") as Int32Array;
  return {
    taskId,
    weights: {
      bytes: adapter.file.rawBytes("weights"),
      dtype: adapter.dtype,
      rows: adapter.rows.length,
      rowLength: adapter.rowLength,
    },
    config,
    configWidth: config.length / adapter.rows.length === 4 ? 4 : 3,
  };
}
