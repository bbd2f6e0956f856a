/**
 * An adapter's rows checked against a base model (a Hugging Face config or a TensorRT-LLM engine):
 * widths, layer indices, and for engines the dtype, `max_lora_rank` and `lora_target_modules`. Every
 * problem is returned, grouped so that one mistake repeated over 32 layers reads as one line.
 */
import { type FloatDType, floatDTypeName } from "../formats/dtypes.ts";
import { type ModuleName, moduleShape } from "../formats/lora-modules.ts";
import type { BaseModel } from "../formats/model-config.ts";
import type { TrtllmAdapter } from "./trtllm-adapter.ts";

/** `__metadata__` key where `extract` records each module's [in, out] widths (JSON). */
export const MODULE_WIDTHS_KEY = "module_widths";

/** What is known of one row: PEFT rows know their widths; TensorRT-LLM rows only their rank. */
export interface RowShape {
  module: ModuleName;
  layer: number;
  rank: number;
  in?: number;
  out?: number;
}

/** The problems of `rows` (in `dtype`, padded to `rowLength` when known) against `base`. */
export function checkAgainstBase(
  rows: readonly RowShape[],
  base: BaseModel,
  dtype: FloatDType,
  rowLength?: number,
): string[] {
  const problems: string[] = [];
  const grouped = new LayerGroups();
  const engine = base.engine;
  if (engine) {
    if (!engine.loraPlugin) {
      problems.push(
        `${base.path}: the engine was built without the LoRA plugin (trtllm-build --lora_plugin ...)`,
      );
    }
    if (engine.dtype !== dtype) {
      problems.push(
        `the weights are ${floatDTypeName(dtype)} but the engine's dtype is ${engine.dtypeName}: convert with -t ${engine.dtypeName}`,
      );
    }
  }
  const d = base.dims;
  for (const row of rows) {
    const shape = moduleShape(row.module, d);
    if (!shape) {
      grouped.add(row, `${row.module} does not exist in a Llama-family model`);
      continue;
    }
    if (row.layer >= d.layers)
      grouped.add(row, `layer ${row.layer} does not exist (the model has ${d.layers} layers)`);
    if (row.in !== undefined && row.in !== shape.in) {
      grouped.add(row, `lora_A is [${row.rank}, ${row.in}] but the model's input width is ${shape.in}`);
    }
    if (row.out !== undefined && row.out !== shape.out) {
      grouped.add(row, `lora_B is [${row.out}, ${row.rank}] but the model's output width is ${shape.out}`);
    }
    const needed = row.rank * (shape.in + shape.out);
    if (rowLength !== undefined && needed > rowLength) {
      grouped.add(row, `rank ${row.rank} needs ${needed} values per row but rows hold ${rowLength}`);
    }
    if (engine) {
      if (row.rank > engine.maxLoraRank) {
        grouped.add(row, `rank ${row.rank} exceeds the engine's max_lora_rank ${engine.maxLoraRank}`);
      }
      if (!engine.targetModules.includes(row.module)) {
        grouped.add(row, `not among the engine's lora_target_modules [${engine.targetModules.join(", ")}]`);
      }
      if (row.module === "attn_dense" && d.heads * d.headDim !== d.hidden) {
        grouped.add(
          row,
          `TensorRT-LLM sizes attn_dense as hidden -> hidden (${d.hidden}), but this model's is ${d.heads * d.headDim} -> ${d.hidden}`,
        );
      }
    }
  }
  return [...problems, ...grouped.lines()];
}

/**
 * The problems of a TensorRT-LLM file against `base`: its rows' ranks and modules (`checkAgainstBase`),
 * and its widths, which its rows do not carry: the widths `extract` recorded in `__metadata__`, when
 * there, must be the model's, and each row's values beyond rank x (in + out) must be zero padding (a
 * non-zero value there means the rows were made for wider modules).
 */
export function checkTrtllmAgainstBase(adapter: TrtllmAdapter, base: BaseModel): string[] {
  const problems = checkAgainstBase(adapter.rows, base, adapter.dtype, adapter.rowLength);
  const grouped = new LayerGroups();
  const recorded = recordedWidths(adapter.file.metadata[MODULE_WIDTHS_KEY], problems);
  const weights = adapter.file.view("weights") as Uint16Array | Float32Array;
  const wide = adapter.dtype === "F32";
  const bits = wide
    ? new Uint32Array(weights.buffer, weights.byteOffset, weights.length)
    : (weights as Uint16Array);
  const magnitude = wide ? 0x7fffffff : 0x7fff; // -0 is padding too
  adapter.rows.forEach((row, i) => {
    const shape = moduleShape(row.module, base.dims);
    if (!shape) return;
    const widths = recorded?.[row.module];
    if (widths && (widths[0] !== shape.in || widths[1] !== shape.out)) {
      grouped.add(
        row,
        `was extracted for widths ${widths[0]} -> ${widths[1]} but the model's are ${shape.in} -> ${shape.out}`,
      );
    }
    const needed = row.rank * (shape.in + shape.out);
    const start = i * adapter.rowLength;
    for (let j = start + needed; j < start + adapter.rowLength; j++) {
      if (((bits[j] as number) & magnitude) !== 0) {
        grouped.add(
          row,
          `non-zero values beyond rank ${row.rank} x (${shape.in} + ${shape.out}): the rows were made for other widths`,
        );
        break;
      }
    }
  });
  return [...problems, ...grouped.lines()];
}

/** The widths in `__metadata__`, by module; undefined when absent, a problem when unreadable. */
function recordedWidths(
  text: string | undefined,
  problems: string[],
): Record<string, [number, number]> | undefined {
  if (text === undefined) return undefined;
  try {
    const parsed = JSON.parse(text) as unknown;
    if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
      const entries = Object.entries(parsed);
      if (entries.every(([, w]) => Array.isArray(w) && w.length === 2 && w.every(Number.isSafeInteger)))
        return parsed as Record<string, [number, number]>;
    }
  } catch {}
  problems.push(`__metadata__ ${MODULE_WIDTHS_KEY} is not {module: [in, out]}: ${text.slice(0, 80)}`);
  return undefined;
}

/** Collects the same problem of one module over many layers into one line. */
class LayerGroups {
  private readonly groups = new Map<string, { module: ModuleName; text: string; layers: number[] }>();

  add(row: RowShape, text: string): void {
    const key = `${row.module}\u0000${text}`;
    const g = this.groups.get(key) ?? { module: row.module, text, layers: [] };
    g.layers.push(row.layer);
    this.groups.set(key, g);
  }

  lines(): string[] {
    return [...this.groups.values()].map((g) => `${g.module} (${formatLayers(g.layers)}): ${g.text}`);
  }
}

/** "layer 3", or "layers 0-3, 7" */
export function formatLayers(layers: readonly number[]): string {
  const sorted = [...new Set(layers)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && (sorted[j + 1] as number) === (sorted[j] as number) + 1) j++;
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return `${sorted.length === 1 ? "layer" : "layers"} ${parts.join(", ")}`;
}
