/**
 * Which model and adapter a request names (ARCHITECTURE.md section 5): the base model answers to its
 * served names; an adapter may be named in `model` (vLLM / NIM style) or in `lora_model` (llgtrt), and the
 * two must agree. Anything else is a 404 model_not_found.
 */
import { MultiloraError } from "../errors.ts";
import type { AdapterVersion, LoraRegistry } from "../lora/registry.ts";

export interface Target {
  /** The name responses echo. */
  model: string;
  adapter?: AdapterVersion;
}

export interface TargetSettings {
  /** Names the base model answers to; the first is its id. */
  servedNames: readonly string[];
  /** null when the server runs without a LoRA dir. */
  registry: LoraRegistry | null;
}

/**
 * The model and adapter of a request; `allowedAdapters` (a tenant's key) limits which adapters it may
 * use, null = any.
 */
export async function resolveTarget(
  settings: TargetSettings,
  model: string,
  loraModel: string | null | undefined,
  allowedAdapters: ReadonlySet<string> | null,
): Promise<Target> {
  const { servedNames, registry } = settings;
  let adapterName: string | undefined = loraModel ?? undefined;
  if (!servedNames.includes(model)) {
    if (!registry?.has(model)) {
      throw new MultiloraError(
        `model "${model}" does not exist: the base model is ${servedNames.map((n) => `"${n}"`).join(" or ")}${registry ? "; adapters are listed at /v1/models" : ""}`,
        { code: "model_not_found", param: "model" },
      );
    }
    if (loraModel && loraModel !== model) {
      throw new MultiloraError(
        `model names adapter "${model}" but lora_model names "${loraModel}"; name one adapter`,
        { code: "conflicting_adapter", param: "lora_model" },
      );
    }
    adapterName = model;
  }
  if (adapterName === undefined) return { model };
  if (!registry) {
    throw new MultiloraError(`lora_model "${adapterName}" was given, but this server has no LoRA dir`, {
      code: "lora_not_found",
      param: "lora_model",
    });
  }
  if (allowedAdapters && !allowedAdapters.has(adapterName)) {
    throw new MultiloraError(`this API key may not use adapter "${adapterName}"`, {
      code: "adapter_not_allowed",
      param: "lora_model",
    });
  }
  return { model, adapter: await registry.get(adapterName) };
}
