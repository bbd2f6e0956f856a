/**
 * PEFT's `adapter_config.json`, parsed in one place: one schema that accepts the keys of every PEFT
 * version (unknown keys are ignored), the settings multilora cannot honour listed all at once, and the
 * per-module rank, alpha and scale computed as PEFT computes them.
 */
import * as v from "valibot";
import { MultiloraError } from "../errors.ts";
import { parseJsonText, parseWith } from "../formats/json-file.ts";
import { type AdapterFileOptions, readConfigText } from "./adapter-files.ts";

const Rank = v.pipe(v.number(), v.integer(), v.minValue(1));
const LayerIndex = v.pipe(v.number(), v.integer(), v.minValue(0));

/** The keys that matter; every other key (corda_config, eva_config, megatron_core, ...) passes through. */
export const PeftConfigSchema = v.looseObject({
  peft_type: v.optional(v.string(), "LORA"),
  task_type: v.nullish(v.string()),
  base_model_name_or_path: v.nullish(v.string()),
  r: v.optional(Rank, 8),
  lora_alpha: v.optional(v.number(), 8),
  target_modules: v.nullish(v.union([v.string(), v.array(v.string())])),
  use_rslora: v.optional(v.boolean(), false),
  use_dora: v.optional(v.boolean(), false),
  fan_in_fan_out: v.optional(v.boolean(), false),
  bias: v.optional(v.string(), "none"),
  lora_bias: v.optional(v.boolean(), false),
  modules_to_save: v.nullish(v.array(v.string())),
  layers_to_transform: v.nullish(v.union([LayerIndex, v.array(LayerIndex)])),
  layers_pattern: v.nullish(v.union([v.string(), v.array(v.string())])),
  rank_pattern: v.nullish(v.record(v.string(), Rank)),
  alpha_pattern: v.nullish(v.record(v.string(), v.number())),
  layer_replication: v.nullish(v.array(v.unknown())),
  use_qalora: v.optional(v.boolean(), false),
  target_parameters: v.nullish(v.array(v.string())),
  trainable_token_indices: v.nullish(v.unknown()),
  init_lora_weights: v.optional(v.union([v.boolean(), v.string()])),
});

export type PeftConfig = v.InferOutput<typeof PeftConfigSchema>;

/** A setting or tensor multilora cannot convert. */
export interface Unsupported {
  what: string;
  /** Whether `--skip-unsupported` may drop it (true only when it adds modules; never when it changes the math). */
  skippable: boolean;
}

/** Reads and checks `adapter_config.json` (a regular file of at most 1 MB, confined per `options`). */
export function readPeftConfig(path: string, options: AdapterFileOptions = {}): PeftConfig {
  const code = "invalid_adapter_config";
  return parseWith(PeftConfigSchema, parseJsonText(readConfigText(path, options), path, code), path, code);
}

/** Every setting of `config` that changes the adapter in a way TensorRT-LLM's LoRA format cannot carry. */
export function unsupportedSettings(config: PeftConfig): Unsupported[] {
  const found: Unsupported[] = [];
  const fatal = (what: string) => found.push({ what, skippable: false });
  if (config.peft_type.toUpperCase() !== "LORA")
    fatal(`peft_type "${config.peft_type}": only LORA adapters exist in TensorRT-LLM`);
  if (config.use_dora) {
    fatal(
      "use_dora: DoRA needs its magnitude normalised with the base weights, which TensorRT-LLM does not do",
    );
  }
  if (config.fan_in_fan_out)
    fatal("fan_in_fan_out: weights stored transposed (Conv1D models) are not supported");
  if (config.bias !== "none")
    fatal(`bias "${config.bias}": trained biases change the base model and cannot be carried`);
  if (config.lora_bias) fatal("lora_bias: a bias on lora_B cannot be carried");
  if (config.layer_replication && config.layer_replication.length > 0) {
    fatal("layer_replication: the adapter was trained on a model with duplicated layers");
  }
  if (config.use_qalora) fatal("use_qalora: QA-LoRA pools the input and cannot be carried");
  if (config.modules_to_save && config.modules_to_save.length > 0) {
    found.push({
      what: `modules_to_save [${config.modules_to_save.join(", ")}]: fully trained copies of modules cannot be carried`,
      skippable: true,
    });
  }
  if (config.target_parameters && config.target_parameters.length > 0) {
    found.push({
      what: `target_parameters [${config.target_parameters.join(", ")}]: LoRA on raw parameters is not supported`,
      skippable: true,
    });
  }
  if (isSet(config.trainable_token_indices)) {
    found.push({
      what: "trainable_token_indices: trained token embeddings cannot be carried",
      skippable: true,
    });
  }
  return found;
}

function isSet(value: unknown): boolean {
  if (value === null || value === undefined) return false;
  if (Array.isArray(value)) return value.length > 0;
  if (typeof value === "object") return Object.keys(value).length > 0;
  return true;
}

/** Warnings about settings that convert fine but may surprise. */
export function configWarnings(config: PeftConfig): string[] {
  const init = config.init_lora_weights;
  if (typeof init === "string" && /^(pissa|olora|corda|eva|loftq)/i.test(init)) {
    return [
      `init_lora_weights "${init}" changes the base model's weights at initialisation; ` +
        "unless PEFT converted the adapter to plain LoRA when it was saved, results on the unmodified base will differ",
    ];
  }
  return [];
}

/**
 * The first key of `pattern` (in the config's order) that matches `modulePath`, by PEFT's rule: a key
 * matches when `(.*\.)?(key)$` matches the whole module name.
 */
export function matchPattern(
  pattern: Readonly<Record<string, number>>,
  modulePath: string,
): number | undefined {
  for (const [key, value] of Object.entries(pattern)) {
    let re: RegExp;
    try {
      re = new RegExp(`^(.*\\.)?(${key})$`);
    } catch (e) {
      throw new MultiloraError(
        `rank or alpha pattern "${key}" is not a valid regular expression (${(e as Error).message})`,
        {
          code: "invalid_adapter_config",
        },
      );
    }
    if (re.test(modulePath)) return value;
  }
  return undefined;
}

export interface ModuleScaling {
  rank: number;
  alpha: number;
  /** alpha / rank, or alpha / sqrt(rank) with use_rslora. */
  scale: number;
}

/** The rank, alpha and scale PEFT uses for the module at `modulePath` (e.g. `model.layers.3.mlp.up_proj`). */
export function moduleScaling(config: PeftConfig, modulePath: string): ModuleScaling {
  const rank = matchPattern(config.rank_pattern ?? {}, modulePath) ?? config.r;
  const alpha = matchPattern(config.alpha_pattern ?? {}, modulePath) ?? config.lora_alpha;
  const scale = config.use_rslora ? alpha / Math.sqrt(rank) : alpha / rank;
  return { rank, alpha, scale };
}

/** The layers the adapter may touch, or undefined for all. */
export function layersToTransform(config: PeftConfig): ReadonlySet<number> | undefined {
  const layers = config.layers_to_transform;
  if (layers === null || layers === undefined) return undefined;
  return new Set(typeof layers === "number" ? [layers] : layers);
}
