/**
 * PEFT folders converted to TensorRT-LLM's format once per content: the result is kept in
 * `<cache-dir>/peft` under a hash of the folder's weights, its config and the dtype, with the converted
 * file's own sha256 recorded beside it (`<cache-dir>/peft-sha256/<file>.sha256`), and the folder is trimmed to a byte cap
 * (--converted-cache-mb), least recently used first.
 *
 * A cached file is used only when its hash is the one recorded: a tampered, truncated or unreadable one
 * is removed and converted again. A folder is checked against the served model before it is converted.
 * Temporaries left by a process that died while converting are removed at start.
 */
import {
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  statSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { basename, join } from "node:path";
import { MultiloraError } from "../errors.ts";
import type { FloatDType } from "../formats/dtypes.ts";
import type { BaseModel } from "../formats/model-config.ts";
import type { SafetensorsFile } from "../formats/safetensors-reader.ts";
import { sha256Hex } from "../formats/sha256.ts";
import { readAdapterSafetensors, readConfigText } from "./adapter-files.ts";
import { convertPeftAdapter } from "./convert.ts";
import { adapterProblems, asInvalidLora } from "./invalid-adapter.ts";
import { loadPeftAdapter } from "./peft-adapter.ts";
import { checkAgainstBase } from "./validate.ts";

export interface ConvertedCacheOptions {
  /** The served model: a folder is checked against it before converting. */
  base?: BaseModel;
  /** The LoRA dir (a real path): the folder's files must be inside it. */
  loraDir?: string;
  /** The most bytes of an adapter file (--max-adapter-mb). */
  maxAdapterBytes?: number;
}

/** A converted file, read and checked: its path, contents and sha256. */
export interface ConvertedFile {
  path: string;
  file: SafetensorsFile;
  sha256: string;
}

/** What a temporary file of the safetensors writer is called: `.<name>.tmp-<pid>-<uuid>`. */
const TEMPORARY = /\.tmp-(\d+)-/;

export class ConvertedCache {
  /** Where the converted files are. */
  readonly dir: string;
  /** Where each one's sha256 is recorded. */
  readonly hashes: string;

  constructor(
    cacheDir: string,
    /** Most bytes of converted files kept. */
    readonly maxBytes: number,
    /** The dtype adapters are converted to (the engine's). */
    readonly dtype: FloatDType,
    readonly options: ConvertedCacheOptions = {},
  ) {
    this.dir = join(cacheDir, "peft");
    this.hashes = join(cacheDir, "peft-sha256");
    removeStaleTemporaries(this.dir);
    removeStaleTemporaries(this.hashes);
  }

  /**
   * The converted file of the PEFT folder `folder` (adapter `name`), read and checked: the cached one
   * when this content was converted before and the file still has its recorded hash, else converted now.
   * A folder that cannot be converted, or does not fit the served model, is an invalid_lora listing its
   * problems. Its files must be inside `root` (by default the LoRA dir).
   */
  async read(name: string, folder: string, root = this.options.loraDir): Promise<ConvertedFile> {
    try {
      const files = { root, maxBytes: this.options.maxAdapterBytes };
      const peft = await loadPeftAdapter(folder, files);
      const base = this.options.base;
      if (base) {
        // The rows the conversion would write, as long as its longest: the same checks as its output gets.
        const rowLength = Math.max(0, ...peft.pairs.map((p) => p.rank * (p.in + p.out)));
        const problems = checkAgainstBase(peft.pairs, base, this.dtype, rowLength);
        if (problems.length > 0) throw adapterProblems(`${folder} does not fit the served model:`, problems);
      }
      const sha = await peft.sha256;
      const configSha = sha256Hex(new TextEncoder().encode(readConfigText(peft.configPath, files)));
      const key = sha256Hex(new TextEncoder().encode(`${sha}:${configSha}:${this.dtype}`));
      mkdirSync(this.dir, { recursive: true });
      const dir = realpathSync(this.dir);
      const output = join(dir, `${key.slice(0, 32)}.safetensors`);
      const cached = await this.cached(output, dir);
      if (cached) return cached;
      await convertPeftAdapter(peft, { output, dtype: this.dtype });
      const read = await this.readOwn(output, dir);
      const record = this.recordOf(output);
      mkdirSync(this.hashes, { recursive: true });
      writeFileSync(`${record}.tmp-${process.pid}-record`, read.sha256);
      renameSync(`${record}.tmp-${process.pid}-record`, record);
      trimCache(this.dir, this.maxBytes, output, this.hashes);
      return { path: output, ...read };
    } catch (e) {
      throw e instanceof MultiloraError ? asInvalidLora(e, `adapter "${name}": `) : e;
    }
  }

  /** The cached conversion at `output` when it is there with its recorded hash; else removed, undefined. */
  private async cached(output: string, dir: string): Promise<ConvertedFile | undefined> {
    let recorded: string;
    try {
      recorded = readFileSync(this.recordOf(output), "utf8").trim();
    } catch {
      removeConverted(output, this.recordOf(output));
      return undefined;
    }
    try {
      const read = await this.readOwn(output, dir);
      if (read.sha256 === recorded) {
        const now = new Date();
        utimesSync(output, now, now); // most recently used
        return { path: output, ...read };
      }
    } catch {}
    removeConverted(output, this.recordOf(output)); // tampered, truncated or unreadable: converted again
    return undefined;
  }

  private recordOf(output: string): string {
    return join(this.hashes, `${basename(output)}.sha256`);
  }

  private readOwn(path: string, dir: string): Promise<{ file: SafetensorsFile; sha256: string }> {
    return readAdapterSafetensors(path, { root: dir, maxBytes: this.options.maxAdapterBytes });
  }
}

function removeConverted(output: string, record: string): void {
  for (const f of [output, record]) {
    try {
      unlinkSync(f);
    } catch {}
  }
}

/** Removes the temporaries of processes that are gone (killed while converting). */
export function removeStaleTemporaries(dir: string): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return; // not there yet
  }
  for (const name of names) {
    const pid = Number(TEMPORARY.exec(name)?.[1] ?? Number.NaN);
    if (Number.isNaN(pid) || isAlive(pid)) continue;
    try {
      unlinkSync(join(dir, name));
    } catch {}
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Removes the least recently used converted adapters until the folder holds at most `maxBytes`. */
export function trimCache(dir: string, maxBytes: number, keep: string, hashes?: string): void {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith(".safetensors") && !f.startsWith("."))
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
    if (hashes === undefined) continue;
    try {
      unlinkSync(join(hashes, `${basename(f.path)}.sha256`));
    } catch {}
  }
}
