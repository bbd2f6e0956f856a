/**
 * PEFT folders converted to TensorRT-LLM's format once per content: the result is kept in
 * `<cache-dir>/peft` under a hash of the folder's weights, its config and the dtype, and the folder is
 * trimmed to a byte cap (--converted-cache-mb), least recently used first.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, unlinkSync, utimesSync } from "node:fs";
import { join } from "node:path";
import { MultiloraError } from "../errors.ts";
import type { FloatDType } from "../formats/dtypes.ts";
import { sha256Hex } from "../formats/sha256.ts";
import { convertPeftAdapter } from "./convert.ts";
import { asInvalidLora } from "./invalid-adapter.ts";
import { readPeftAdapter } from "./peft-adapter.ts";

export class ConvertedCache {
  /** Where the converted files are. */
  readonly dir: string;

  constructor(
    cacheDir: string,
    /** Most bytes of converted files kept. */
    readonly maxBytes: number,
    /** The dtype adapters are converted to (the engine's). */
    readonly dtype: FloatDType,
  ) {
    this.dir = join(cacheDir, "peft");
  }

  /**
   * The converted file of the PEFT folder `folder` (adapter `name`): converted now unless this content
   * was before. A folder that cannot be converted is an invalid_lora listing its problems.
   */
  async convert(name: string, folder: string): Promise<string> {
    try {
      const peft = readPeftAdapter(folder);
      const sha = await peft.sha256;
      const configSha = sha256Hex(readFileSync(join(folder, "adapter_config.json")));
      const key = sha256Hex(new TextEncoder().encode(`${sha}:${configSha}:${this.dtype}`));
      mkdirSync(this.dir, { recursive: true });
      const output = join(this.dir, `${key.slice(0, 32)}.safetensors`);
      if (existsSync(output)) {
        const now = new Date();
        utimesSync(output, now, now); // most recently used
      } else {
        await convertPeftAdapter(peft, { output, dtype: this.dtype });
        trimCache(this.dir, this.maxBytes, output);
      }
      return output;
    } catch (e) {
      throw e instanceof MultiloraError ? asInvalidLora(e, `adapter "${name}": `) : e;
    }
  }
}

/** Removes the least recently used converted adapters until the folder holds at most `maxBytes`. */
export function trimCache(dir: string, maxBytes: number, keep: string): void {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith(".safetensors"))
    .map((f) => {
      const path = join(dir, f);
      const s = statSync(path);
      return { path, size: s.size, used: s.mtimeMs };
    })
    .sort((a, b) => a.used - b.used);
  let total = files.reduce((sum, f) => sum + f.size, 0);
  for (const f of files) {
    if (total <= maxBytes) break;
    if (f.path === keep) continue;
    try {
      unlinkSync(f.path);
      total -= f.size;
    } catch {}
  }
}
