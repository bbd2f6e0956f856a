/**
 * What an adapter holds, in either format (a PEFT folder or a TensorRT-LLM file): modules, layers, ranks,
 * dtype, bytes, scale, and whether it is valid (against a base model when one is given).
 */
import { statSync } from "node:fs";
import { resolve } from "node:path";
import { MultiloraError } from "../errors.ts";
import { floatDTypeName } from "../formats/dtypes.ts";
import { MODULE_IDS, type ModuleName } from "../formats/lora-modules.ts";
import type { BaseModel } from "../formats/model-config.ts";
import { readAdapterSafetensorsSync } from "./adapter-files.ts";
import { readPeftAdapter } from "./peft-adapter.ts";
import { parseTrtllmAdapter } from "./trtllm-adapter.ts";
import { checkAgainstBase, checkTrtllmAgainstBase, formatLayers, type RowShape } from "./validate.ts";

export interface ModuleReport {
  module: ModuleName;
  /** The Hugging Face name, for PEFT adapters. */
  hfModule?: string;
  layers: string;
  ranks: number[];
  /** The scale B is multiplied by (PEFT), or undefined when already folded in (TensorRT-LLM). */
  scales?: number[];
}

export interface AdapterReport {
  path: string;
  format: "peft" | "trtllm";
  valid: boolean;
  /** Why it cannot be used (empty when valid). */
  problems: string[];
  warnings: string[];
  dtype?: string;
  /** Size of the weights file. */
  bytes: number;
  rows: number;
  layers: number;
  ranks: number[];
  modules: ModuleReport[];
  /** How the LoRA scale is applied, in words. */
  scale?: string;
  baseModel?: string;
  /** The safetensors `__metadata__` (provenance, for converted files). */
  metadata?: Record<string, string>;
}

export function inspectAdapter(path: string, base?: BaseModel): AdapterReport {
  path = resolve(path);
  let stat: ReturnType<typeof statSync>;
  try {
    stat = statSync(path);
  } catch {
    throw new MultiloraError(`${path}: does not exist`, { code: "file_not_found" });
  }
  return stat.isDirectory() ? inspectPeft(path, base) : inspectTrtllm(path, stat.size, base);
}

function emptyReport(
  path: string,
  format: AdapterReport["format"],
  bytes: number,
  problem: string,
): AdapterReport {
  return {
    path,
    format,
    valid: false,
    problems: [problem],
    warnings: [],
    bytes,
    rows: 0,
    layers: 0,
    ranks: [],
    modules: [],
  };
}

function inspectPeft(dir: string, base?: BaseModel): AdapterReport {
  let adapter: ReturnType<typeof readPeftAdapter>;
  try {
    adapter = readPeftAdapter(dir);
  } catch (e) {
    if (e instanceof MultiloraError) return emptyReport(dir, "peft", 0, e.message);
    throw e;
  }
  const pairs = adapter.pairs;
  const problems = adapter.unsupported.map((u) =>
    u.skippable ? `${u.what} (extract --skip-unsupported skips it)` : u.what,
  );
  if (base) problems.push(...checkAgainstBase(pairs, base, adapter.dtype));
  const c = adapter.config;
  return {
    path: dir,
    format: "peft",
    valid: problems.length === 0 && pairs.length > 0,
    problems,
    warnings: adapter.warnings,
    dtype: floatDTypeName(adapter.dtype),
    bytes: adapter.file.bytes.length,
    rows: pairs.length,
    layers: new Set(pairs.map((p) => p.layer)).size,
    ranks: uniqueSorted(pairs.map((p) => p.rank)),
    modules: summarizeModules(pairs),
    scale: `${c.use_rslora ? "alpha / sqrt(r)" : "alpha / r"} (r ${c.r}, lora_alpha ${c.lora_alpha}), applied to B`,
    baseModel: c.base_model_name_or_path ?? undefined,
    metadata: adapter.file.metadata,
  };
}

function inspectTrtllm(path: string, size: number, base?: BaseModel): AdapterReport {
  let adapter: ReturnType<typeof parseTrtllmAdapter>;
  try {
    const read = readAdapterSafetensorsSync(path);
    read.sha256.catch(() => {});
    adapter = parseTrtllmAdapter(read.file);
  } catch (e) {
    if (e instanceof MultiloraError) return emptyReport(path, "trtllm", size, e.message);
    throw e;
  }
  const meta = adapter.file.metadata;
  const problems = base ? checkTrtllmAgainstBase(adapter, base) : [];
  return {
    path,
    format: "trtllm",
    valid: problems.length === 0,
    problems,
    warnings: [],
    dtype: floatDTypeName(adapter.dtype),
    bytes: size,
    rows: adapter.rows.length,
    layers: new Set(adapter.rows.map((r) => r.layer)).size,
    ranks: uniqueSorted(adapter.rows.map((r) => r.rank)),
    modules: summarizeModules(adapter.rows),
    scale:
      meta.lora_alpha !== undefined
        ? `folded into B (r ${meta.r}, lora_alpha ${meta.lora_alpha}${meta.use_rslora === "true" ? ", rsLoRA" : ""})`
        : "folded into B",
    baseModel: meta.base_model_name_or_path || undefined,
    metadata: meta,
  };
}

function uniqueSorted(values: number[]): number[] {
  return [...new Set(values)].sort((a, b) => a - b);
}

function summarizeModules(
  rows: readonly (RowShape & { hfModule?: string; scale?: number })[],
): ModuleReport[] {
  const byModule = new Map<ModuleName, (RowShape & { hfModule?: string; scale?: number })[]>();
  for (const r of rows) byModule.set(r.module, [...(byModule.get(r.module) ?? []), r]);
  return [...byModule.entries()]
    .sort(([a], [b]) => MODULE_IDS[a] - MODULE_IDS[b])
    .map(([module, rs]) => ({
      module,
      hfModule: rs[0]?.hfModule,
      layers: formatLayers(rs.map((r) => r.layer)),
      ranks: uniqueSorted(rs.map((r) => r.rank)),
      scales: rs[0]?.scale === undefined ? undefined : uniqueSorted(rs.map((r) => r.scale as number)),
    }));
}
