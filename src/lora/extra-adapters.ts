/**
 * Adapters named at run time (vLLM's `POST /v1/load_lora_adapter {lora_name, lora_path}`), beside those of
 * the LoRA dir: a name -> a file or PEFT folder. The path must lead, links resolved, inside the LoRA dir
 * or a dir of `--allowed-lora-paths`, never elsewhere; that dir is then the root its files are confined to
 * when read (adapter-files.ts), as the LoRA dir is for its own adapters.
 */
import { lstatSync, realpathSync, statSync } from "node:fs";
import { join, resolve, sep } from "node:path";
import { MultiloraError } from "../errors.ts";
import type { AdapterEntry } from "./adapter-dir.ts";

/** An adapter named at run time, and the allowed dir its files must stay in. */
export interface ExtraEntry extends AdapterEntry {
  root: string;
}

export class ExtraAdapters {
  /** The allowed dirs, real paths. */
  readonly roots: string[];
  /** The allowed dirs as given and as real paths: a lora_path must name one of them before anything is looked at. */
  private readonly spellings: string[];
  private readonly byName = new Map<string, ExtraEntry>();

  constructor(roots: readonly string[]) {
    this.roots = roots.map((dir) => {
      try {
        const real = realpathSync(dir);
        if (!statSync(real).isDirectory()) throw new Error("not a directory");
        return real;
      } catch (e) {
        throw new MultiloraError(`--allowed-lora-paths ${dir} cannot be used: ${(e as Error).message}`, {
          code: "invalid_config",
        });
      }
    });
    this.spellings = [...new Set([...roots.map((dir) => resolve(dir)), ...this.roots])];
  }

  get(name: string): ExtraEntry | undefined {
    return this.byName.get(name);
  }

  entries(): ExtraEntry[] {
    return [...this.byName.values()];
  }

  /**
   * Names `path` `name`: 400 lora_path_not_allowed when it leads (links resolved) outside every allowed
   * dir, 404 when it is not there, 400 invalid_adapter when it is neither a .safetensors file nor a PEFT
   * folder.
   */
  add(name: string, path: string): ExtraEntry {
    // Lexically first, so a path elsewhere is refused without touching (or probing) anything there.
    const lexical = resolve(path);
    if (!this.spellings.some((r) => lexical.startsWith(r + sep))) throw notAllowed(path);
    let real: string;
    try {
      real = realpathSync(path);
    } catch {
      throw new MultiloraError(`lora_path ${JSON.stringify(path)}: No adapter found there`, {
        code: "lora_not_found",
        param: "lora_path",
      });
    }
    const root = this.roots.find((r) => real === r || real.startsWith(r + sep));
    if (root === undefined || real === root) throw notAllowed(path);
    const entry: ExtraEntry = { name, format: formatOf(real, path), path: real, root };
    this.byName.set(name, entry);
    return entry;
  }

  remove(name: string): void {
    this.byName.delete(name);
  }
}

function notAllowed(path: string): MultiloraError {
  return new MultiloraError(
    `lora_path ${JSON.stringify(path)} is not inside the LoRA dir or a dir of --allowed-lora-paths`,
    { code: "lora_path_not_allowed", param: "lora_path" },
  );
}

function formatOf(real: string, path: string): AdapterEntry["format"] {
  const s = statSync(real);
  if (s.isFile() && real.endsWith(".safetensors")) return "trtllm";
  if (s.isDirectory()) {
    try {
      lstatSync(join(real, "adapter_config.json"));
      return "peft";
    } catch {}
  }
  throw new MultiloraError(
    `lora_path ${JSON.stringify(path)} is neither a .safetensors file (TensorRT-LLM's format) nor a PEFT folder with an adapter_config.json`,
    { code: "invalid_adapter", param: "lora_path" },
  );
}
