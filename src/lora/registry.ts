/**
 * The adapters in the LoRA dir, by name: `<dir>/<name>.safetensors` (TensorRT-LLM's format) or a PEFT
 * folder `<dir>/<name>/` (converted on first use, the result cached under the cache dir by content hash).
 *
 * Every load reads the file into memory we own, hashes it and validates it against the engine; the engine
 * gets exactly those bytes. Each content version gets its own task id, never reused for other content, so
 * after a file is replaced new requests get the new weights while running ones finish on the old. A change
 * is noticed from (device, inode, size, mtime in ns) and confirmed by the hash.
 *
 * The parts: the dir and its names (adapter-dir.ts), task ids (task-ids.ts), weights kept in host memory
 * (host-copies.ts), converted PEFT folders (converted-cache.ts); validation is validate.ts.
 */
import { existsSync } from "node:fs";
import type { LoraRef } from "../engine/engine.ts";
import { MultiloraError } from "../errors.ts";
import { type FloatDType, floatDTypeName } from "../formats/dtypes.ts";
import type { ModuleName } from "../formats/lora-modules.ts";
import type { BaseModel, ModelDims } from "../formats/model-config.ts";
import { parseSafetensors, readFileHashed } from "../formats/safetensors-reader.ts";
import {
  AdapterDir,
  type AdapterEntry,
  type AdapterFormat,
  type Freshness,
  fingerprintOf,
} from "./adapter-dir.ts";
import { ConvertedCache } from "./converted-cache.ts";
import { HostCopies } from "./host-copies.ts";
import { AdapterInvalidError, adapterProblems, asInvalidLora } from "./invalid-adapter.ts";
import { TaskIds } from "./task-ids.ts";
import { loraRefOf, parseTrtllmAdapter, type TrtllmAdapter } from "./trtllm-adapter.ts";
import { checkAgainstBase } from "./validate.ts";

export type { AdapterFormat, Freshness } from "./adapter-dir.ts";

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

/** One content version of an adapter, loaded and validated. Its weights: `LoraRegistry.weights(version)`. */
export interface AdapterVersion {
  name: string;
  format: AdapterFormat;
  /** The file the weights came from (for PEFT: the converted file in the cache dir). */
  path: string;
  taskId: bigint;
  sha256: string;
  fingerprint: string;
  dtype: FloatDType;
  bytes: number;
  rows: number;
  layers: number;
  ranks: number[];
  modules: ModuleName[];
  baseModel: string | undefined;
  loadedAt: Date;
}

export interface AdapterListing extends AdapterEntry {
  /** Set once the adapter was loaded (and is still the file's content as far as we know). */
  version?: AdapterVersion;
}

export interface LoraRegistryOptions {
  /** The LoRA dir. */
  dir: string;
  /** Where converted PEFT adapters are kept (in its `peft` folder). */
  cacheDir: string;
  requirements: AdapterRequirements;
  /** Most bytes of converted PEFT adapters kept in the cache dir; least recently used go first. Default 4 GiB. */
  convertedCacheMaxBytes?: number;
  /** Most bytes of adapter weights kept in host memory (to resend after an engine eviction). Default 4 GiB. */
  hostMaxBytes?: number;
  /** Told of every adapter version read from disk, and how long reading, hashing and validating took. */
  onLoad?: (name: string, seconds: number) => void;
}

const DEFAULT_MAX_BYTES = 4 * 1024 ** 3;

export class LoraRegistry {
  /** The LoRA dir, as given. */
  readonly dir: string;
  readonly requirements: AdapterRequirements;
  /** How many times an adapter file was read and validated (concurrent first uses share one). */
  loads = 0;
  private readonly adapterDir: AdapterDir;
  private readonly taskIds = new TaskIds();
  private readonly hostCopies: HostCopies;
  private readonly converted: ConvertedCache;
  private readonly onLoad: (name: string, seconds: number) => void;
  private readonly versions = new Map<string, AdapterVersion>();
  private versionChanges = 0;
  private lastListing:
    | { entries: readonly AdapterEntry[]; versions: number; listing: readonly AdapterListing[] }
    | undefined;
  private readonly loading = new Map<string, Promise<AdapterVersion>>();

  constructor(options: LoraRegistryOptions) {
    this.dir = options.dir;
    this.requirements = options.requirements;
    this.adapterDir = new AdapterDir(options.dir);
    this.hostCopies = new HostCopies(options.hostMaxBytes ?? DEFAULT_MAX_BYTES);
    this.converted = new ConvertedCache(
      options.cacheDir,
      options.convertedCacheMaxBytes ?? DEFAULT_MAX_BYTES,
      options.requirements.dtype,
    );
    this.onLoad = options.onLoad ?? (() => {});
  }

  /** How many times dropped weights were read again from disk. */
  get rereads(): number {
    return this.hostCopies.rereads;
  }

  /**
   * Every adapter in the dir (from memory while the dir is unchanged; new files appear at once). The same
   * array comes back while neither the dir nor a loaded version changed, so callers may cache what they
   * derive from it by identity.
   */
  list(freshness: Freshness = "now"): readonly AdapterListing[] {
    const entries = this.adapterDir.list(freshness);
    const last = this.lastListing;
    if (last && last.entries === entries && last.versions === this.versionChanges) return last.listing;
    const listing = entries.map((entry) => ({ ...entry, version: this.versions.get(entry.name) }));
    this.lastListing = { entries, versions: this.versionChanges, listing };
    return listing;
  }

  /** Whether `name` is an adapter in the dir, as cheap as `list()`; never throws for a bad name. */
  has(name: string, freshness: Freshness = "now"): boolean {
    return this.adapterDir.has(name, freshness);
  }

  /** The file or folder for `name`, confined to the LoRA dir; 400 for a bad name, 404 when absent. */
  locate(name: string): { format: AdapterFormat; path: string } {
    const { format, path } = this.adapterDir.locate(name);
    return { format, path };
  }

  /** The adapter's current version: the cached one when the file has not changed, else loaded anew. */
  async get(name: string): Promise<AdapterVersion> {
    const entry = this.adapterDir.locate(name);
    const fingerprint = fingerprintOf(entry);
    const current = this.versions.get(name);
    if (current && current.fingerprint === fingerprint) return current;
    const key = `${name}\u0000${fingerprint}`;
    let pending = this.loading.get(key);
    if (!pending) {
      pending = this.load(entry, fingerprint).finally(() => this.loading.delete(key));
      this.loading.set(key, pending);
    }
    return pending;
  }

  /** The loaded version of `name`, if any, without touching the disk. */
  loaded(name: string): AdapterVersion | undefined {
    return this.versions.get(name);
  }

  /**
   * The engine request's LoRA part for `version` (weights in memory we own): the host copy, or read again
   * from disk when that copy was dropped to stay under the host-memory cap (a 409 if the file changed).
   */
  weights(version: AdapterVersion): Promise<LoraRef> {
    return this.hostCopies.weights(version, async () => {
      if (version.format === "trtllm" || existsSync(version.path)) return version.path;
      // The converted file was trimmed from the cache: convert again (a changed folder fails the hash check).
      const entry = this.adapterDir.locate(version.name);
      return entry.format === "peft" ? this.converted.convert(version.name, entry.path) : version.path;
    });
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
      if (e instanceof AdapterInvalidError) return { problems: [...e.problems], warnings: [] };
      throw e;
    }
  }

  /** Stops watching the LoRA dir. */
  close(): void {
    this.adapterDir.close();
  }

  private async load(entry: AdapterEntry, fingerprint: string): Promise<AdapterVersion> {
    const { name, format } = entry;
    this.loads++;
    const startedAt = performance.now();
    const file = format === "trtllm" ? entry.path : await this.converted.convert(name, entry.path);
    const read = readFileHashed(file);
    // Parse and validate while a worker finishes the hash.
    let adapter: TrtllmAdapter;
    try {
      adapter = parseTrtllmAdapter(parseSafetensors(read.bytes, file));
    } catch (e) {
      await read.sha256.catch(() => {});
      throw e instanceof MultiloraError ? asInvalidLora(e) : e;
    }
    const sha256 = await read.sha256;
    this.check(name, adapter);
    const taskId = this.taskIds.idOf(sha256);
    this.hostCopies.keep(taskId, loraRefOf(adapter, taskId), read.bytes.length);
    const version: AdapterVersion = {
      name,
      format,
      path: file,
      taskId,
      sha256,
      fingerprint,
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
    this.versionChanges++;
    this.onLoad(name, (performance.now() - startedAt) / 1000);
    return version;
  }

  /** The engine's checks, before anything is sent: every problem in one 400. */
  private check(name: string, adapter: TrtllmAdapter): void {
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
    if (problems.length > 0)
      throw adapterProblems(`adapter "${name}" does not fit the served model:`, problems);
  }
}
