/**
 * The executorWorker a multi-GPU TensorRT-LLM engine needs: in orchestrator mode the executor spawns it
 * over MPI from OrchestratorConfig's workerExecutablePath, which has no default (an empty path spawns
 * nothing). The wheel ships it as `tensorrt_llm/bin/executorWorker` (its setup.py package_data).
 * Looked for in order: `--trtllm-worker`, `$TRTLLM_ROOT/bin/executorWorker`, then the installed
 * `tensorrt_llm` package found by Python without importing it.
 */
import { spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { MultiloraError } from "../errors.ts";

/** Where Python would import `tensorrt_llm` from, without importing it (import needs a GPU driver). */
export function pythonTrtllmRoot(): string | undefined {
  const script =
    "import importlib.util, os\ns = importlib.util.find_spec('tensorrt_llm')\nprint(os.path.dirname(s.origin) if s and s.origin else '')";
  const r = spawnSync("python3", ["-c", script], { encoding: "utf8", timeout: 10_000 });
  const dir = r.status === 0 ? r.stdout.trim() : "";
  return dir.length > 0 ? dir : undefined;
}

function isFile(path: string): boolean {
  return existsSync(path) && statSync(path).isFile();
}

/** The worker's path for a `worldSize`-GPU engine; undefined for one GPU (no orchestrator). */
export function resolveTrtllmWorker(
  worldSize: number,
  option: string | undefined,
  env: Record<string, string | undefined> = process.env,
  findRoot: () => string | undefined = pythonTrtllmRoot,
): string | undefined {
  if (worldSize <= 1) return option;
  if (option !== undefined) {
    if (!isFile(option))
      throw new MultiloraError(`--trtllm-worker ${option}: no such file`, { code: "invalid_config" });
    return option;
  }
  const looked: string[] = [];
  const roots = [env.TRTLLM_ROOT, ...(env.TRTLLM_ROOT ? [] : [findRoot()])];
  for (const root of roots) {
    if (!root) continue;
    const path = join(root, "bin", "executorWorker");
    if (isFile(path)) return path;
    looked.push(path);
  }
  throw new MultiloraError(
    `this engine runs on ${worldSize} GPUs, and TensorRT-LLM's orchestrator mode needs its executorWorker, ` +
      `which was not found (${looked.length > 0 ? `looked at ${looked.join(", ")}` : "no tensorrt_llm package found by python3 and no $TRTLLM_ROOT"}). ` +
      "Pass --trtllm-worker <site-packages>/tensorrt_llm/bin/executorWorker, or set TRTLLM_ROOT.",
    { code: "backend_unavailable" },
  );
}
