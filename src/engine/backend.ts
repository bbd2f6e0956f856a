/**
 * Which engine runs a model dir: TensorRT-LLM for a `trtllm-build` engine dir (config.json with
 * `build_config`), the CPU engine for a Hugging Face checkpoint. `--backend` overrides, and a mismatch is
 * refused with the reason rather than failing later inside an engine.
 */
import { MultiloraError } from "../errors.ts";
import { isTrtllmEngineDir } from "./trtllm-engine.ts";

export type Backend = "cpu" | "trtllm";

export function chooseBackend(modelDir: string, requested: Backend | "auto"): Backend {
  const isEngine = isTrtllmEngineDir(modelDir);
  if (requested === "auto") return isEngine ? "trtllm" : "cpu";
  if (requested === "cpu" && isEngine)
    throw new MultiloraError(
      `${modelDir} is a TensorRT-LLM engine (trtllm-build output); the CPU engine runs Hugging Face checkpoints. Use --backend trtllm or auto.`,
      { code: "invalid_model" },
    );
  if (requested === "trtllm" && !isEngine)
    throw new MultiloraError(
      `${modelDir} is not a trtllm-build engine dir (no config.json with build_config); build one with scripts/build-engine.sh, or use --backend cpu for a Hugging Face checkpoint.`,
      { code: "invalid_model" },
    );
  return requested;
}
