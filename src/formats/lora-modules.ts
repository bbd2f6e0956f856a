/**
 * TensorRT-LLM's LoRA module ids, the Hugging Face names that map to them, and each module's input and
 * output widths for a Llama-family model (ARCHITECTURE.md section 2).
 */
import type { ModelDims } from "./model-config.ts";

/** TensorRT-LLM's `LoraModule::ModuleType` values, by its own names. */
export const MODULE_IDS = {
  attn_qkv: 0,
  attn_q: 1,
  attn_k: 2,
  attn_v: 3,
  attn_dense: 4,
  mlp_h_to_4h: 5,
  mlp_4h_to_h: 6,
  mlp_gate: 7,
  cross_attn_qkv: 8,
  cross_attn_q: 9,
  cross_attn_k: 10,
  cross_attn_v: 11,
  cross_attn_dense: 12,
  moe_h_to_4h: 13,
  moe_4h_to_h: 14,
  moe_gate: 15,
  moe_router: 16,
  mlp_router: 17,
  mlp_gate_up: 18,
} as const;

export type ModuleName = keyof typeof MODULE_IDS;

const NAMES_BY_ID = new Map<number, ModuleName>(
  Object.entries(MODULE_IDS).map(([name, id]) => [id, name as ModuleName]),
);

export function moduleName(id: number): ModuleName | undefined {
  return NAMES_BY_ID.get(id);
}

export function isModuleName(name: string): name is ModuleName {
  return Object.hasOwn(MODULE_IDS, name);
}

/**
 * Hugging Face (PEFT) module names of Llama-family models and their TensorRT-LLM modules. Note the
 * crossing in the MLP: gate_proj is mlp_h_to_4h and up_proj is mlp_gate.
 */
export const HF_MODULES = {
  q_proj: "attn_q",
  k_proj: "attn_k",
  v_proj: "attn_v",
  o_proj: "attn_dense",
  gate_proj: "mlp_h_to_4h",
  up_proj: "mlp_gate",
  down_proj: "mlp_4h_to_h",
  qkv_proj: "attn_qkv",
  gate_up_proj: "mlp_gate_up",
} as const satisfies Record<string, ModuleName>;

export type HfModuleName = keyof typeof HF_MODULES;

export function isHfModuleName(name: string): name is HfModuleName {
  return Object.hasOwn(HF_MODULES, name);
}

/** The modules a Llama-family model has, in the order rows are written. */
export const LLAMA_MODULES: readonly ModuleName[] = [
  "attn_qkv",
  "attn_q",
  "attn_k",
  "attn_v",
  "attn_dense",
  "mlp_gate_up",
  "mlp_h_to_4h",
  "mlp_gate",
  "mlp_4h_to_h",
];

/** Input and output width of `module` in a Llama-family model, or undefined for other modules. */
export function moduleShape(module: ModuleName, d: ModelDims): { in: number; out: number } | undefined {
  const q = d.heads * d.headDim;
  const kv = d.kvHeads * d.headDim;
  switch (module) {
    case "attn_qkv":
      return { in: d.hidden, out: q + 2 * kv };
    case "attn_q":
      return { in: d.hidden, out: q };
    case "attn_k":
    case "attn_v":
      return { in: d.hidden, out: kv };
    case "attn_dense":
      return { in: q, out: d.hidden };
    case "mlp_h_to_4h":
    case "mlp_gate":
      return { in: d.hidden, out: d.intermediate };
    case "mlp_gate_up":
      return { in: d.hidden, out: 2 * d.intermediate };
    case "mlp_4h_to_h":
      return { in: d.intermediate, out: d.hidden };
    default:
      return undefined;
  }
}
