/**
 * A Hugging Face PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`) read into
 * memory and sorted into (module, layer) pairs of lora_A / lora_B tensors, with everything that cannot be
 * converted listed at once.
 */
import { existsSync, lstatSync, statSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { MultiloraError } from "../errors.ts";
import type { FloatDType } from "../formats/dtypes.ts";
import {
  HF_MODULES,
  type HfModuleName,
  isHfModuleName,
  LLAMA_MODULES,
  type ModuleName,
} from "../formats/lora-modules.ts";
import type { SafetensorsFile, TensorInfo } from "../formats/safetensors-reader.ts";
import {
  type AdapterFileOptions,
  type ReadAdapter,
  readAdapterSafetensors,
  readAdapterSafetensorsSync,
} from "./adapter-files.ts";
import { adapterProblems } from "./invalid-adapter.ts";
import {
  configWarnings,
  layersToTransform,
  moduleScaling,
  type PeftConfig,
  readPeftConfig,
  type Unsupported,
  unsupportedSettings,
} from "./peft-config.ts";

/** One converted row: the lora_A and lora_B of one module in one layer. */
export interface LoraPair {
  /** The module's name in the base model, e.g. `model.layers.3.self_attn.q_proj`. */
  modulePath: string;
  hfModule: HfModuleName;
  module: ModuleName;
  layer: number;
  /** [rank, in] */
  a: TensorInfo;
  /** [out, rank] */
  b: TensorInfo;
  rank: number;
  alpha: number;
  scale: number;
  in: number;
  out: number;
}

export interface PeftAdapter {
  dir: string;
  /** The folder's name: the adapter's name by default. */
  name: string;
  configPath: string;
  weightsPath: string;
  config: PeftConfig;
  file: SafetensorsFile;
  /** sha256 (hex) of adapter_model.safetensors, computed in the background while it was read. */
  sha256: Promise<string>;
  /** Pairs sorted by layer, then module id. */
  pairs: LoraPair[];
  /** What cannot be converted, settings first, then tensors. */
  unsupported: Unsupported[];
  warnings: string[];
  /** The dtype shared by the pairs' tensors; F32 when they differ. */
  dtype: FloatDType;
}

/** What a tensor name in a PEFT file means. */
type TensorRole =
  | { kind: "lora"; modulePath: string; side: "A" | "B"; adapterName: string }
  | { kind: "unsupported"; what: string; skippable: boolean };

const LORA_WEIGHT = /^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.([^.]+))?\.weight$/;

function classifyTensor(name: string): TensorRole {
  const m = LORA_WEIGHT.exec(name);
  if (m)
    return { kind: "lora", modulePath: m[1] as string, side: m[2] as "A" | "B", adapterName: m[3] ?? "" };
  if (/\.lora_embedding_[AB]\b/.test(name))
    return { kind: "unsupported", what: "embedding LoRA (lora_embedding_A/B)", skippable: true };
  if (/\.lora_magnitude_vector\b/.test(name))
    return { kind: "unsupported", what: "DoRA magnitude vectors (lora_magnitude_vector)", skippable: false };
  if (/\.lora_[AB](\.[^.]+)?\.bias$/.test(name))
    return { kind: "unsupported", what: "trained LoRA biases (lora_B.bias)", skippable: false };
  if (/trainable_tokens|token_adapter/.test(name))
    return { kind: "unsupported", what: "trainable token embeddings", skippable: true };
  if (/\.bias$/.test(name))
    return { kind: "unsupported", what: "trained biases of base modules", skippable: false };
  return { kind: "unsupported", what: "full weights of modules_to_save", skippable: true };
}

const LAYER = /(?:^|\.)layers\.(\d+)\./;

/**
 * Reads the adapter in `dir`. Throws one error listing every problem found in the files themselves
 * (missing pairs, shapes that disagree with the config, dtypes that are not floats); what merely
 * cannot be converted is returned in `unsupported` so the caller can apply `--skip-unsupported`.
 * Files are opened as src/lora/adapter-files.ts says (confined to `options.root` when given).
 */
export function readPeftAdapter(dir: string, options: AdapterFileOptions = {}): PeftAdapter {
  const { configPath, weightsPath } = peftFiles(resolve(dir));
  const config = readPeftConfig(configPath, options);
  return peftAdapterOf(resolve(dir), config, readAdapterSafetensorsSync(weightsPath, options));
}

/** `readPeftAdapter`, with the weights read off the event loop (the server's way). */
export async function loadPeftAdapter(dir: string, options: AdapterFileOptions = {}): Promise<PeftAdapter> {
  const { configPath, weightsPath } = peftFiles(resolve(dir));
  const config = readPeftConfig(configPath, options);
  const read = await readAdapterSafetensors(weightsPath, options);
  return peftAdapterOf(resolve(dir), config, { file: read.file, sha256: Promise.resolve(read.sha256) });
}

/** Whether anything (a file, a link, even a dangling one) is at `path`, without following a link. */
function present(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function peftFiles(dir: string): { configPath: string; weightsPath: string } {
  if (!existsSync(dir)) throw new MultiloraError(`${dir}: does not exist`, { code: "file_not_found" });
  if (!statSync(dir).isDirectory()) {
    throw new MultiloraError(`${dir}: is a file; give the PEFT adapter's folder (with adapter_config.json)`, {
      code: "invalid_adapter",
    });
  }
  const configPath = join(dir, "adapter_config.json");
  if (!present(configPath)) {
    throw new MultiloraError(`${dir}: has no adapter_config.json; is it a PEFT adapter folder?`, {
      code: "invalid_adapter",
    });
  }
  const weightsPath = join(dir, "adapter_model.safetensors");
  if (!present(weightsPath)) {
    const bin = join(dir, "adapter_model.bin");
    if (present(bin)) {
      throw new MultiloraError(
        `${bin}: PyTorch pickle files are not read (they can run code). Save the adapter as safetensors: ` +
          "`model.save_pretrained(dir, safe_serialization=True)`, or convert it with " +
          "`safetensors.torch.save_file(torch.load(path, weights_only=True), 'adapter_model.safetensors')`",
        { code: "invalid_adapter" },
      );
    }
    throw new MultiloraError(`${dir}: has no adapter_model.safetensors`, { code: "invalid_adapter" });
  }
  return { configPath, weightsPath };
}

function peftAdapterOf(dir: string, config: PeftConfig, read: ReadAdapter): PeftAdapter {
  const configPath = join(dir, "adapter_config.json");
  const weightsPath = join(dir, "adapter_model.safetensors");
  const file = read.file;
  const { pairs, unsupported, problems } = pairTensors(file, config);
  if (problems.length > 0) {
    read.sha256.catch(() => {});
    throw adapterProblems(`${weightsPath} cannot be converted:`, problems, { code: "invalid_adapter" });
  }
  return {
    dir,
    name: basename(dir),
    configPath,
    weightsPath,
    config,
    file,
    sha256: read.sha256,
    pairs,
    unsupported: [...unsupportedSettings(config), ...unsupported],
    warnings: configWarnings(config),
    dtype: commonDType(pairs),
  };
}

interface Halves {
  modulePath: string;
  adapterName: string;
  a?: TensorInfo;
  b?: TensorInfo;
}

function pairTensors(
  file: SafetensorsFile,
  config: PeftConfig,
): { pairs: LoraPair[]; unsupported: Unsupported[]; problems: string[] } {
  const problems: string[] = [];
  const unsupported = new Map<string, Unsupported & { tensors: number; modules: Set<string> }>();
  const flag = (what: string, skippable: boolean, detail: string) => {
    const entry = unsupported.get(what) ?? { what, skippable, tensors: 0, modules: new Set<string>() };
    entry.tensors++;
    entry.modules.add(detail);
    unsupported.set(what, entry);
  };

  const halves = new Map<string, Halves>();
  for (const info of file.tensors.values()) {
    const role = classifyTensor(info.name);
    if (role.kind === "unsupported") {
      flag(role.what, role.skippable, info.name);
      continue;
    }
    const key = `${role.modulePath}/${role.adapterName}`;
    const h = halves.get(key) ?? { modulePath: role.modulePath, adapterName: role.adapterName };
    h[role.side === "A" ? "a" : "b"] = info;
    halves.set(key, h);
  }

  const adapterNames = new Set([...halves.values()].map((h) => h.adapterName));
  if (adapterNames.size > 1) {
    problems.push(
      `the file holds ${adapterNames.size} adapters (${[...adapterNames].map((n) => n || "(unnamed)").join(", ")}); save one per folder`,
    );
  }

  const allowedLayers = layersToTransform(config);
  const pairs: LoraPair[] = [];
  for (const h of halves.values()) {
    const shortName = h.modulePath.slice(h.modulePath.lastIndexOf(".") + 1);
    const layerMatch = LAYER.exec(h.modulePath);
    if (!isHfModuleName(shortName) || !layerMatch) {
      const what =
        shortName === "lm_head"
          ? "LoRA on lm_head"
          : shortName === "embed_tokens"
            ? "embedding LoRA (embed_tokens)"
            : `LoRA on unknown module "${shortName}" (supported: ${Object.keys(HF_MODULES).join(", ")})`;
      if (h.a) flag(what, true, h.a.name);
      if (h.b) flag(what, true, h.b.name);
      continue;
    }
    if (!h.a || !h.b) {
      problems.push(
        `${h.modulePath}: lora_${h.a ? "B" : "A"} is missing (lora_${h.a ? "A" : "B"} is present)`,
      );
      continue;
    }
    const pair = checkPair(h.modulePath, shortName, Number(layerMatch[1]), h.a, h.b, config, problems);
    if (!pair) continue;
    if (allowedLayers && !allowedLayers.has(pair.layer)) {
      problems.push(
        `${h.modulePath}: layer ${pair.layer} is not in layers_to_transform [${[...allowedLayers].join(", ")}]`,
      );
      continue;
    }
    pairs.push(pair);
  }
  checkConsistentWidths(pairs, problems);
  if (pairs.length === 0 && problems.length === 0 && unsupported.size === 0) {
    problems.push("no lora_A / lora_B tensors found");
  }
  pairs.sort((x, y) => x.layer - y.layer || rowOrder(x.module) - rowOrder(y.module));

  const tensorsUnsupported = [...unsupported.values()].map(({ what, skippable, tensors, modules }) => ({
    what: `${what}: ${tensors} tensor${tensors === 1 ? "" : "s"} (${summarizeNames([...modules])})`,
    skippable,
  }));
  return { pairs, unsupported: tensorsUnsupported, problems };
}

const rowOrder = (m: ModuleName) => LLAMA_MODULES.indexOf(m);

function summarizeNames(names: string[]): string {
  return names.length <= 2 ? names.join(", ") : `${names.slice(0, 2).join(", ")}, ...`;
}

function checkPair(
  modulePath: string,
  hfModule: HfModuleName,
  layer: number,
  a: TensorInfo,
  b: TensorInfo,
  config: PeftConfig,
  problems: string[],
): LoraPair | undefined {
  const before = problems.length;
  for (const t of [a, b]) {
    if (t.dtype !== "F32" && t.dtype !== "F16" && t.dtype !== "BF16") {
      problems.push(`${t.name}: dtype ${t.dtype}; LoRA weights must be F32, F16 or BF16`);
    }
    if (t.shape.length !== 2) problems.push(`${t.name}: shape [${t.shape.join(", ")}] is not 2-D`);
  }
  if (problems.length > before) return undefined;
  const [rank, inDim] = a.shape as [number, number];
  const [outDim, bRank] = b.shape as [number, number];
  const scaling = moduleScaling(config, modulePath);
  if (bRank !== rank) {
    problems.push(
      `${modulePath}: lora_A is [${a.shape.join(", ")}] but lora_B is [${b.shape.join(", ")}]: the ranks differ`,
    );
  } else if (rank !== scaling.rank) {
    problems.push(
      `${modulePath}: the tensors have rank ${rank} but adapter_config.json gives r = ${scaling.rank} for this module (r / rank_pattern)`,
    );
  }
  if (rank === 0 || inDim === 0 || outDim === 0) problems.push(`${modulePath}: empty tensors`);
  if (hfModule === "gate_up_proj" && outDim % 2 !== 0) {
    problems.push(
      `${modulePath}: lora_B has ${outDim} rows, an odd number, so it cannot be split into gate and up`,
    );
  }
  if (problems.length > before) return undefined;
  return {
    modulePath,
    hfModule,
    module: HF_MODULES[hfModule],
    layer,
    a,
    b,
    ...scaling,
    in: inDim,
    out: outDim,
  };
}

/** Without a base model to compare with, every layer's module must at least have the same widths. */
function checkConsistentWidths(pairs: LoraPair[], problems: string[]): void {
  const first = new Map<HfModuleName, LoraPair>();
  for (const p of pairs) {
    const f = first.get(p.hfModule);
    if (!f) first.set(p.hfModule, p);
    else if (f.in !== p.in || f.out !== p.out) {
      problems.push(
        `${p.modulePath}: maps ${p.in} -> ${p.out} but ${f.modulePath} maps ${f.in} -> ${f.out}: one model cannot have both`,
      );
    }
  }
}

function commonDType(pairs: LoraPair[]): FloatDType {
  const dtypes = new Set(pairs.flatMap((p) => [p.a.dtype, p.b.dtype]));
  return dtypes.size === 1 ? ([...dtypes][0] as FloatDType) : "F32";
}

/** Whether any of `unsupported` is beyond `--skip-unsupported`. */
export function hasFatal(unsupported: readonly Unsupported[]): boolean {
  return unsupported.some((u) => !u.skippable);
}
