/**
 * PEFT adapter -> TensorRT-LLM LoRA tensors (ARCHITECTURE.md section 2).
 *
 * Output: a safetensors file with
 *   weights [N, R]  in the output dtype; row i = A [r, in] row-major, then B·scale [out, r] row-major,
 *                   then zeros up to R (the longest row);
 *   config  [N, 3]  int32 rows [module_id, layer, r].
 * For a fused gate_up_proj (module mlp_gate_up) the two halves of B are swapped: PEFT stores
 * [gate; up], TensorRT-LLM reads [up; gate].
 *
 * Rows are converted (by the native kernel when the library is built, else in TypeScript) and streamed
 * one chunk at a time, while the source file's sha256 is computed on a worker.
 * Nothing appears at the output path unless every row converted cleanly.
 */

import { nativeCastFloats } from "../engine/native.ts";
import { MultiloraError } from "../errors.ts";
import {
  castFloats as castFloatsTs,
  countNonFinite,
  type FloatDType,
  type FloatSource,
  floatDTypeName,
} from "../formats/dtypes.ts";
import { MODULE_IDS, type ModuleName } from "../formats/lora-modules.ts";
import type { BaseModel } from "../formats/model-config.ts";
import type { SafetensorsFile, TensorInfo } from "../formats/safetensors-reader.ts";
import { SafetensorsWriter } from "../formats/safetensors-writer.ts";
import { VERSION } from "../version.ts";
import { adapterProblems } from "./invalid-adapter.ts";
import { hasFatal, type LoraPair, type PeftAdapter } from "./peft-adapter.ts";
import { checkAgainstBase, MODULE_WIDTHS_KEY } from "./validate.ts";

export interface ConvertOptions {
  /** The output file. */
  output: string;
  /** Output dtype; default: the engine's when `base` is an engine, else the adapter's own. */
  dtype?: FloatDType;
  /** A base model to check every shape against. */
  base?: BaseModel;
  /** Skip modules that cannot be converted (with a warning) instead of failing. */
  skipUnsupported?: boolean;
  onWarning?: (message: string) => void;
  /** Called as rows are written: bytes of the weights tensor written so far, and in all. */
  onProgress?: (written: number, total: number) => void;
}

export interface ConversionSummary {
  output: string;
  rows: number;
  modules: ModuleName[];
  layers: number;
  ranks: number[];
  dtype: FloatDType;
  /** R: values per row. */
  rowLength: number;
  /** Size of the output file. */
  bytes: number;
  sourceSha256: string;
}

/** Metadata key under which the source's sha256 is recorded. */
export const SOURCE_SHA256_KEY = "source_sha256";

/** Output is written in chunks of about this many bytes. */
const CHUNK_BYTES = 4 << 20;

export async function convertPeftAdapter(
  adapter: PeftAdapter,
  options: ConvertOptions,
): Promise<ConversionSummary> {
  const warn = options.onWarning ?? (() => {});
  checkUnsupported(adapter, options.skipUnsupported ?? false, warn);
  for (const w of adapter.warnings) warn(w);
  const pairs = adapter.pairs;
  if (pairs.length === 0) {
    throw new MultiloraError(`${adapter.dir}: no LoRA modules left to convert`, {
      code: "unsupported_adapter",
    });
  }
  const dtype = options.dtype ?? options.base?.engine?.dtype ?? adapter.dtype;
  if (options.base) {
    const problems = checkAgainstBase(pairs, options.base, dtype);
    if (problems.length > 0) {
      throw adapterProblems(`${adapter.dir} does not fit ${options.base.path}:`, problems, {
        code: "invalid_adapter",
      });
    }
  }

  const elemSize = dtype === "F32" ? 4 : 2;
  const rowLength = Math.max(...pairs.map((p) => p.rank * (p.in + p.out)));
  const rowBytes = rowLength * elemSize;
  const config = new Int32Array(pairs.flatMap((p) => [MODULE_IDS[p.module], p.layer, p.rank]));
  const metadata = provenance(adapter, dtype, "0".repeat(64));
  const writer = SafetensorsWriter.create(
    options.output,
    [
      { name: "weights", dtype, shape: [pairs.length, rowLength] },
      { name: "config", dtype: "I32", shape: [pairs.length, 3] },
    ],
    metadata,
  );
  try {
    const nonFinite = writeRows(adapter.file, pairs, dtype, rowBytes, writer, options.onProgress);
    if (nonFinite.length > 0) {
      throw adapterProblems(`${adapter.weightsPath} has values that cannot be converted:`, nonFinite, {
        code: "invalid_adapter",
      });
    }
    writer.write(new Uint8Array(config.buffer));
    const sourceSha256 = await adapter.sha256;
    writer.setMetadata({ ...metadata, [SOURCE_SHA256_KEY]: sourceSha256 });
    writer.commit();
    return {
      output: options.output,
      rows: pairs.length,
      modules: [...new Set(pairs.map((p) => p.module))],
      layers: new Set(pairs.map((p) => p.layer)).size,
      ranks: [...new Set(pairs.map((p) => p.rank))].sort((a, b) => a - b),
      dtype,
      rowLength,
      bytes: writer.fileLength,
      sourceSha256,
    };
  } catch (e) {
    writer.abort();
    throw e;
  }
}

/** Fails on anything unsupported, unless all of it may be skipped and the caller asked to. */
function checkUnsupported(adapter: PeftAdapter, skip: boolean, warn: (m: string) => void): void {
  const found = adapter.unsupported;
  if (found.length === 0) return;
  if (skip && !hasFatal(found)) {
    for (const u of found) warn(`skipped ${u.what}`);
    return;
  }
  const lines = found.map((u) => (u.skippable ? `${u.what} (--skip-unsupported skips it)` : u.what));
  throw adapterProblems(`${adapter.dir} uses what TensorRT-LLM LoRA cannot carry:`, lines, {
    code: "unsupported_adapter",
  });
}

function provenance(adapter: PeftAdapter, dtype: FloatDType, sha256: string): Record<string, string> {
  const c = adapter.config;
  const targets = c.target_modules ?? [...new Set(adapter.pairs.map((p) => p.hfModule))];
  return {
    format: "trtllm-lora",
    source: adapter.name,
    base_model_name_or_path: c.base_model_name_or_path ?? "",
    r: String(c.r),
    lora_alpha: String(c.lora_alpha),
    use_rslora: String(c.use_rslora),
    rank_pattern: JSON.stringify(c.rank_pattern ?? {}),
    alpha_pattern: JSON.stringify(c.alpha_pattern ?? {}),
    target_modules: JSON.stringify(targets),
    dtype: floatDTypeName(dtype),
    [MODULE_WIDTHS_KEY]: JSON.stringify(
      Object.fromEntries(adapter.pairs.map((p) => [p.module, [p.in, p.out]])),
    ),
    [SOURCE_SHA256_KEY]: sha256,
    converter: `multilora ${VERSION}`,
  };
}

/** The native kernel when available (bit-identical, several times faster), else TypeScript. */
const castFloats: typeof castFloatsTs = (...args) => {
  const native = nativeCast?.(...args) ?? -1;
  return native >= 0 ? native : castFloatsTs(...args);
};
const nativeCast = nativeCastFloats();

function floatSource(file: SafetensorsFile, t: TensorInfo): FloatSource {
  return { dtype: t.dtype, data: file.view(t.name) } as FloatSource;
}

/** Converts and writes every row; returns the tensors with NaN or Inf (none written to a committed file). */
function writeRows(
  file: SafetensorsFile,
  pairs: readonly LoraPair[],
  dtype: FloatDType,
  rowBytes: number,
  writer: SafetensorsWriter,
  onProgress: ConvertOptions["onProgress"],
): string[] {
  const elemSize = dtype === "F32" ? 4 : 2;
  const rowsPerChunk = Math.max(1, Math.floor(CHUNK_BYTES / rowBytes));
  const chunk = new Uint8Array(rowsPerChunk * rowBytes);
  const problems: string[] = [];
  const total = pairs.length * rowBytes;
  let filled = 0;
  let written = 0;
  const flush = () => {
    writer.write(chunk.subarray(0, filled));
    written += filled;
    filled = 0;
    onProgress?.(written, total);
  };
  for (const p of pairs) {
    const row = chunk.subarray(filled, filled + rowBytes);
    const aCount = p.rank * p.in;
    const bCount = p.rank * p.out;
    const a = floatSource(file, p.a);
    const b = floatSource(file, p.b);
    let bad = castFloats(a, 0, aCount, 1, dtype, row);
    const bOut = row.subarray(aCount * elemSize);
    if (p.module === "mlp_gate_up") {
      const half = bCount / 2;
      bad += castFloats(b, half, half, p.scale, dtype, bOut);
      bad += castFloats(b, 0, half, p.scale, dtype, bOut.subarray(half * elemSize));
    } else {
      bad += castFloats(b, 0, bCount, p.scale, dtype, bOut);
    }
    row.fill(0, (aCount + bCount) * elemSize);
    if (bad > 0) problems.push(describeNonFinite(p, a, b, dtype));
    filled += rowBytes;
    if (filled === chunk.length) flush();
  }
  if (filled > 0) flush();
  return problems;
}

function describeNonFinite(p: LoraPair, a: FloatSource, b: FloatSource, dtype: FloatDType): string {
  const inSource = countNonFinite(a, 0, a.data.length) + countNonFinite(b, 0, b.data.length);
  if (inSource > 0) return `${p.modulePath}: ${inSource} NaN or Inf values in lora_A / lora_B`;
  return `${p.modulePath}: B x scale ${p.scale} overflows ${floatDTypeName(dtype)} (convert with -t float32 or bfloat16)`;
}
