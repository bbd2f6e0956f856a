/**
 * The adapters in the LoRA dir, by name: `<dir>/<name>.safetensors` (TensorRT-LLM's format) or a PEFT
 * folder `<dir>/<name>/` (converted on first use, the result cached under the cache dir by content hash).
 *
 * Every load reads the file into memory we own, hashes it and validates it against the engine; the engine
 * gets exactly those bytes. Each content version gets its own task id, never reused for other content, so
 * after a file is replaced new requests get the new weights while running ones finish on the old. A change
 * is noticed from (device, inode, size, mtime in ns) and confirmed by the hash. Names are confined to the
 * LoRA dir: no absolute paths, no `..`, no NUL, no link that leads outside.
 */
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  statSync,
  unlinkSync,
  utimesSync,
} from "node:fs";
import { dirname, join, resolve, sep } from "node:path";
import type { LoraRef } from "../engine/engine.ts";
import { listProblems, MultiloraError } from "../errors.ts";
import { type FloatDType, floatDTypeName } from "../formats/dtypes.ts";
import type { ModuleName } from "../formats/lora-modules.ts";
import type { BaseModel, ModelDims } from "../formats/model-config.ts";
import { parseSafetensors, readFileHashed } from "../formats/safetensors-reader.ts";
import { sha256Hex } from "../formats/sha256.ts";
import { convertPeftAdapter } from "./convert.ts";
import { readPeftAdapter } from "./peft-adapter.ts";
import { parseTrtllmAdapter } from "./trtllm-adapter.ts";
import { checkAgainstBase } from "./validate.ts";

/** What adapters must satisfy for this engine. */
export interface AdapterRequirements {
  dims: ModelDims;
  /** The model's config.json, for messages. */
  modelPath: string;
  dtype: FloatDType;
  maxRank: number;
  /** The served model's Hugging Face name, to warn when an adapter was trained on another. */
  baseModelName?: string;
  /** A TensorRT-LLM engine's config: its LoRA plugin, lora_target_modules, max_lora_rank and dtype are checked too. */
  engine?: BaseModel;
}

/** One content version of an adapter, loaded and validated. */
export interface AdapterVersion {
  name: string;
  format: "trtllm" | "peft";
  /** The file the weights came from (for PEFT: the converted file in the cache dir). */
  path: string;
  taskId: bigint;
  sha256: string;
  fingerprint: string;
  /**
   * The engine request's LoRA part (weights in memory we own): the registry's host copy, or read again
   * from disk when that copy was dropped to stay under the host-memory cap (a 409 if the file changed).
   */
  weights(): Promise<LoraRef>;
  dtype: FloatDType;
  bytes: number;
  rows: number;
  layers: number;
  ranks: number[];
  modules: ModuleName[];
  baseModel: string | undefined;
  loadedAt: Date;
}

export interface AdapterListing {
  name: string;
  format: "trtllm" | "peft";
  path: string;
  /** Set once the adapter was loaded (and is still the file's content as far as we know). */
  version?: AdapterVersion;
}

const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

export class LoraRegistry {
  private readonly versions = new Map<string, AdapterVersion>();
  private readonly loading = new Map<string, Promise<AdapterVersion>>();
  private readonly idsBySha = new Map<string, bigint>();
  private nextTaskId = 1n;
  /** How many times an adapter file was read and validated (concurrent first uses share one). */
  loads = 0;
  /** How many times dropped weights were read again from disk. */
  rereads = 0;
  /** Host copies of adapter weights by task id, least recently used first, with their file sizes. */
  private readonly hostCopies = new Map<bigint, { lora: LoraRef; bytes: number }>();
  private hostBytes = 0;
  private readonly realDir: string;

  constructor(
    /** The LoRA dir. */
    readonly dir: string,
    /** Where converted PEFT adapters are kept. */
    readonly cacheDir: string,
    readonly requirements: AdapterRequirements,
    /** Most bytes of converted PEFT adapters kept in the cache dir; least recently used go first. */
    readonly cacheMaxBytes = 4 * 1024 ** 3,
    /** Told of every adapter version read from disk, and how long reading, hashing and validating took. */
    private readonly onLoad: (name: string, seconds: number) => void = () => {},
    /** Most bytes of adapter weights kept in host memory (to resend after an engine eviction). */
    readonly hostMaxBytes = 4 * 1024 ** 3,
  ) {
    try {
      this.realDir = realpathSync(dir);
      if (!statSync(this.realDir).isDirectory()) throw new Error("not a directory");
    } catch (e) {
      throw new MultiloraError(`LoRA dir ${dir} cannot be used: ${(e as Error).message}`, {
        code: "invalid_lora_dir",
      });
    }
  }

  /** Every adapter in the dir (scanned now: new files appear at once). */
  list(): AdapterListing[] {
    const found = new Map<string, AdapterListing>();
    for (const entry of readdirSync(this.realDir)) {
      const target = this.confined(join(this.realDir, entry));
      if (target === "missing" || target === "outside") continue; // links that lead out are not adapters
      if (entry.endsWith(".safetensors") && !entry.startsWith(".")) {
        const name = entry.slice(0, -".safetensors".length);
        if (NAME.test(name)) found.set(name, { name, format: "trtllm", path: target });
      } else if (NAME.test(entry) && !found.has(entry) && this.isPeftFolder(target)) {
        found.set(entry, { name: entry, format: "peft", path: target });
      }
    }
    return [...found.values()]
      .map((l) => ({ ...l, version: this.versions.get(l.name) }))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  /** The file or folder for `name`, confined to the LoRA dir; 400 for a bad name, 404 when absent. */
  locate(name: string): { format: "trtllm" | "peft"; path: string } {
    if (!NAME.test(name) || name.includes("..")) {
      throw new MultiloraError(
        `invalid adapter name ${JSON.stringify(name)}: use letters, digits, '_', '-' and '.', without '/' or '..'`,
        { code: "invalid_lora_name", param: "lora_model" },
      );
    }
    const candidates: ["trtllm" | "peft", string][] = [
      ["trtllm", join(this.realDir, `${name}.safetensors`)],
      ["peft", join(this.realDir, name)],
    ];
    for (const [format, path] of candidates) {
      const target = this.confined(path);
      if (target === "missing") continue;
      if (target === "outside") {
        throw new MultiloraError(`adapter "${name}" is a link that leads outside the LoRA dir`, {
          code: "invalid_lora_name",
          param: "lora_model",
        });
      }
      if (format === "peft" && !this.isPeftFolder(target)) continue;
      return { format, path: target };
    }
    throw new MultiloraError(`adapter "${name}" does not exist in the LoRA dir`, {
      status: 404,
      type: "not_found_error",
      code: "lora_not_found",
      param: "lora_model",
    });
  }

  /**
   * Where `path` (an entry of the LoRA dir) leads, following links by reading them only: a link's target
   * is checked as a path before anything there is looked at, so no file outside the dir is ever touched.
   */
  private confined(path: string): string | "missing" | "outside" {
    let current = path;
    for (let hops = 0; hops < 8; hops++) {
      let link: string;
      try {
        if (!lstatSync(current).isSymbolicLink()) return current;
        link = readlinkSync(current);
      } catch {
        return "missing";
      }
      current = resolve(dirname(current), link);
      if (!current.startsWith(this.realDir + sep)) return "outside";
    }
    return "outside"; // a chain of links this long is not an adapter
  }

  private isPeftFolder(path: string): boolean {
    try {
      return statSync(path).isDirectory() && existsSync(join(path, "adapter_config.json"));
    } catch {
      return false;
    }
  }

  /** The adapter's current version: the cached one when the file has not changed, else loaded anew. */
  async get(name: string): Promise<AdapterVersion> {
    const { format, path } = this.locate(name);
    const fingerprint = fingerprintOf(format, path);
    const current = this.versions.get(name);
    if (current && current.fingerprint === fingerprint) return current;
    const key = `${name}\u0000${fingerprint}`;
    let pending = this.loading.get(key);
    if (!pending) {
      pending = this.load(name, format, path, fingerprint).finally(() => this.loading.delete(key));
      this.loading.set(key, pending);
    }
    return pending;
  }

  /** The loaded version of `name`, if any, without touching the disk. */
  loaded(name: string): AdapterVersion | undefined {
    return this.versions.get(name);
  }

  /** Every problem `name` has against this model, without loading it for the engine. */
  async validate(name: string): Promise<{ problems: string[]; warnings: string[] }> {
    try {
      const v = await this.get(name);
      const warnings: string[] = [];
      const base = this.requirements.baseModelName;
      if (v.baseModel && base && v.baseModel !== base) {
        warnings.push(`the adapter was trained on ${v.baseModel}, but the served model is ${base}`);
      }
      return { problems: [], warnings };
    } catch (e) {
      // Problems with the adapter itself are the answer; a bad or unknown name is the request's error.
      if (e instanceof MultiloraError && e.code === "invalid_lora") {
        return {
          problems: e.message
            .split("\n")
            .filter((l) => l.startsWith("  - "))
            .map((l) => l.slice(4)),
          warnings: [],
        };
      }
      throw e;
    }
  }

  private async load(
    name: string,
    format: "trtllm" | "peft",
    path: string,
    fingerprint: string,
  ): Promise<AdapterVersion> {
    this.loads++;
    const startedAt = performance.now();
    const file = format === "trtllm" ? path : await this.convertPeft(name, path);
    const read = readFileHashed(file);
    // Parse and validate while a worker finishes the hash.
    let adapter: ReturnType<typeof parseTrtllmAdapter>;
    try {
      adapter = parseTrtllmAdapter(parseSafetensors(read.bytes, file));
    } catch (e) {
      await read.sha256.catch(() => {});
      throw e instanceof MultiloraError
        ? new MultiloraError(e.message, { code: "invalid_lora", param: "lora_model" })
        : e;
    }
    const sha256 = await read.sha256;
    this.check(name, adapter);
    let taskId = this.idsBySha.get(sha256);
    if (taskId === undefined) {
      taskId = this.nextTaskId++;
      this.idsBySha.set(sha256, taskId);
    }
    this.keepHostCopy(taskId, loraRefOf(taskId, adapter), read.bytes.length);
    const version: AdapterVersion = {
      name,
      format,
      path: file,
      taskId,
      sha256,
      fingerprint,
      weights: () => this.weightsOf(version),
      dtype: adapter.dtype,
      bytes: read.bytes.length,
      rows: adapter.rows.length,
      layers: new Set(adapter.rows.map((r) => r.layer)).size,
      ranks: [...new Set(adapter.rows.map((r) => r.rank))].sort((a, b) => a - b),
      modules: [...new Set(adapter.rows.map((r) => r.module))],
      baseModel: adapter.file.metadata.base_model_name_or_path || undefined,
      loadedAt: new Date(),
    };
    this.versions.set(name, version);
    this.onLoad(name, (performance.now() - startedAt) / 1000);
    return version;
  }

  /** The engine's checks, before anything is sent: every problem in one 400. */
  private check(name: string, adapter: ReturnType<typeof parseTrtllmAdapter>): void {
    const r = this.requirements;
    const base = r.engine ?? {
      path: r.modelPath,
      kind: "huggingface",
      architecture: undefined,
      dims: r.dims,
    };
    const problems = checkAgainstBase(adapter.rows, base, adapter.dtype, adapter.rowLength);
    if (!base.engine) {
      // An engine config brings its own dtype and rank checks; the CPU engine's come from its settings.
      if (adapter.dtype !== r.dtype) {
        problems.unshift(
          `the weights are ${floatDTypeName(adapter.dtype)} but this engine needs ${floatDTypeName(r.dtype)} (multilora extract -t ${floatDTypeName(r.dtype)})`,
        );
      }
      const over = adapter.rows.filter((row) => row.rank > r.maxRank);
      if (over.length > 0)
        problems.push(`rank ${Math.max(...over.map((o) => o.rank))} exceeds max_lora_rank ${r.maxRank}`);
    }
    if (problems.length > 0) {
      throw new MultiloraError(listProblems(`adapter "${name}" does not fit the served model:`, problems), {
        code: "invalid_lora",
        param: "lora_model",
      });
    }
  }

  /** The weights of `v`: the host copy, else read again (and checked to be the same content). */
  private async weightsOf(v: AdapterVersion): Promise<LoraRef> {
    const copy = this.hostCopies.get(v.taskId);
    if (copy) {
      this.hostCopies.delete(v.taskId); // most recently used last
      this.hostCopies.set(v.taskId, copy);
      return copy.lora;
    }
    this.rereads++;
    let file = v.path;
    if (v.format === "peft" && !existsSync(file))
      file = await this.convertPeft(v.name, this.locate(v.name).path);
    const read = readFileHashed(file);
    const adapter = parseTrtllmAdapter(parseSafetensors(read.bytes, file));
    if ((await read.sha256) !== v.sha256) {
      throw new MultiloraError(
        `adapter "${v.name}" changed on disk while this request was starting; send the request again to use the new version`,
        { status: 409, code: "lora_changed", param: "lora_model" },
      );
    }
    const lora = loraRefOf(v.taskId, adapter);
    this.keepHostCopy(v.taskId, lora, read.bytes.length);
    return lora;
  }

  /** Keeps a host copy, dropping the least recently used others beyond `hostMaxBytes` (the newest stays). */
  private keepHostCopy(taskId: bigint, lora: LoraRef, bytes: number): void {
    const old = this.hostCopies.get(taskId);
    if (old) this.hostBytes -= old.bytes;
    this.hostCopies.delete(taskId);
    this.hostCopies.set(taskId, { lora, bytes });
    this.hostBytes += bytes;
    for (const [id, copy] of this.hostCopies) {
      if (this.hostBytes <= this.hostMaxBytes || id === taskId) break;
      this.hostCopies.delete(id);
      this.hostBytes -= copy.bytes;
    }
  }

  /** Converts a PEFT folder once per content; the result lives in the cache dir under its content hash. */
  private async convertPeft(name: string, dir: string): Promise<string> {
    const peft = readPeftAdapter(dir);
    const sha = await peft.sha256;
    const configSha = sha256Hex(readFileSync(join(dir, "adapter_config.json")));
    const key = sha256Hex(new TextEncoder().encode(`${sha}:${configSha}:${this.requirements.dtype}`));
    const outDir = join(this.cacheDir, "peft");
    mkdirSync(outDir, { recursive: true });
    const output = join(outDir, `${key.slice(0, 32)}.safetensors`);
    if (existsSync(output)) {
      const now = new Date();
      utimesSync(output, now, now); // most recently used
    } else {
      try {
        await convertPeftAdapter(peft, { output, dtype: this.requirements.dtype });
        trimCache(outDir, this.cacheMaxBytes, output);
      } catch (e) {
        throw e instanceof MultiloraError
          ? new MultiloraError(`adapter "${name}": ${e.message}`, {
              code: "invalid_lora",
              param: "lora_model",
            })
          : e;
      }
    }
    return output;
  }
}

/** The engine request's LoRA part over a parsed adapter's tensors (views into its owned bytes). */
function loraRefOf(taskId: bigint, adapter: ReturnType<typeof parseTrtllmAdapter>): LoraRef {
  const config = adapter.file.view("config") as Int32Array;
  return {
    taskId,
    weights: {
      bytes: adapter.file.rawBytes("weights"),
      dtype: adapter.dtype,
      rows: adapter.rows.length,
      rowLength: adapter.rowLength,
    },
    config,
    configWidth: config.length / adapter.rows.length === 4 ? 4 : 3,
  };
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

/** (device, inode, size, mtime in ns) of the file that holds the weights, and of a PEFT config. */
function fingerprintOf(format: "trtllm" | "peft", path: string): string {
  const files =
    format === "trtllm"
      ? [path]
      : [join(path, "adapter_model.safetensors"), join(path, "adapter_config.json")];
  return files
    .map((f) => {
      try {
        const s = statSync(f, { bigint: true });
        return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}`;
      } catch {
        return "missing";
      }
    })
    .join("|");
}
