/**
 * The adapters in the LoRA dir, by name: `<dir>/<name>.safetensors` (TensorRT-LLM's format) or a PEFT
 * folder `<dir>/<name>/` (converted on first use, the result cached under the cache dir by content hash).
 *
 * Every load reads the file into memory we own (off the event loop, header first, confined to the LoRA dir,
 * regular files only: adapter-files.ts), hashes it and validates it against the engine; the engine gets
 * exactly those bytes. Each content version gets its own task id, never reused for other content, so
 * after a file is replaced new requests get the new weights while running ones finish on the old. A change
 * is noticed from (device, inode, size, mtime and ctime in ns) and confirmed by the hash. Unloading an
 * adapter forgets its version and host copy, so its next use reads and hashes the file again. A load that
 * failed is remembered for the fingerprint it had, and the adapter is left out of listings until it changes.
 *
 * The parts: the dir and its names (adapter-dir.ts), task ids (task-ids.ts), weights kept in host memory
 * (host-copies.ts), converted PEFT folders (converted-cache.ts); validation is validate.ts.
 */
import type { LoraRef } from "../engine/engine.ts";
import { MultiloraError } from "../errors.ts";
import { type FloatDType, floatDTypeName } from "../formats/dtypes.ts";
import type { ModuleName } from "../formats/lora-modules.ts";
import type { BaseModel, ModelDims } from "../formats/model-config.ts";
import type { SafetensorsFile } from "../formats/safetensors-reader.ts";
import {
  AdapterDir,
  type AdapterEntry,
  type AdapterFormat,
  type Freshness,
  fingerprintOf,
} from "./adapter-dir.ts";
import { readAdapterSafetensors } from "./adapter-files.ts";
import { ConvertedCache } from "./converted-cache.ts";
import { ExtraAdapters } from "./extra-adapters.ts";
import { HostCopies } from "./host-copies.ts";
import { AdapterInvalidError, adapterProblems, asInvalidLora } from "./invalid-adapter.ts";
import { TaskIds } from "./task-ids.ts";
import { loraRefOf, parseTrtllmAdapter, type TrtllmAdapter } from "./trtllm-adapter.ts";
import { checkTrtllmAgainstBase } from "./validate.ts";

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
  /** What may surprise but does not stop it serving (e.g. trained on another base model). */
  warnings: string[];
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
  /** Largest adapter file read (--max-adapter-mb), checked before it is read. Default 4 GiB. */
  maxAdapterBytes?: number;
  /**
   * Dirs besides the LoRA dir whose adapters may be named at run time (`add`, vLLM's load_lora_adapter);
   * the LoRA dir always may.
   */
  allowedPaths?: readonly string[];
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
  /** Adapters named at run time (`add`), served beside the dir's. */
  private readonly extras: ExtraAdapters;
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
  /** The last failed load of each adapter, by the fingerprint it had. */
  private readonly failures = new Map<string, { fingerprint: string; error: AdapterInvalidError }>();
  private readonly maxAdapterBytes: number;

  constructor(options: LoraRegistryOptions) {
    this.dir = options.dir;
    this.requirements = options.requirements;
    this.adapterDir = new AdapterDir(options.dir);
    this.extras = new ExtraAdapters([this.adapterDir.realDir, ...(options.allowedPaths ?? [])]);
    this.hostCopies = new HostCopies(options.hostMaxBytes ?? DEFAULT_MAX_BYTES);
    this.maxAdapterBytes = options.maxAdapterBytes ?? DEFAULT_MAX_BYTES;
    this.converted = new ConvertedCache(
      options.cacheDir,
      options.convertedCacheMaxBytes ?? DEFAULT_MAX_BYTES,
      options.requirements.dtype,
      { base: this.base(), loraDir: this.adapterDir.realDir, maxAdapterBytes: this.maxAdapterBytes },
    );
    this.onLoad = options.onLoad ?? (() => {});
  }

  /** How many times dropped weights were read again from disk. */
  get rereads(): number {
    return this.hostCopies.rereads;
  }

  /**
   * Every adapter in the dir that can serve (from memory while the dir is unchanged; new files appear at
   * once): not those whose files are half-copied or not regular files, nor those whose load failed, until
   * they change. The same array comes back while neither the dir nor a loaded version changed, so callers
   * may cache what they derive from it by identity.
   */
  list(freshness: Freshness = "now"): readonly AdapterListing[] {
    const entries = this.adapterDir.servable(freshness);
    const last = this.lastListing;
    if (last && last.entries === entries && last.versions === this.versionChanges) return last.listing;
    const extras = this.extras.entries();
    const listing = [...entries.filter((e) => !this.extras.get(e.name)), ...extras].map((entry) => ({
      name: entry.name,
      format: entry.format,
      path: entry.path,
      version: this.versions.get(entry.name),
    }));
    this.lastListing = { entries, versions: this.versionChanges, listing };
    return listing;
  }

  /** Whether `name` is an adapter in the dir, as cheap as `list()`; never throws for a bad name. */
  has(name: string, freshness: Freshness = "now"): boolean {
    return this.extras.get(name) !== undefined || this.adapterDir.has(name, freshness);
  }

  /** The file or folder for `name`, confined to the LoRA dir; 400 for a bad name, 404 when absent. */
  locate(name: string): { format: AdapterFormat; path: string } {
    const { format, path } = this.entryOf(name);
    return { format, path };
  }

  /**
   * Serves the file or PEFT folder at `path` as `name` (vLLM's load_lora_adapter): the path, links
   * resolved, must be inside the LoRA dir or a dir of `allowedPaths` (400 lora_path_not_allowed); 400
   * lora_already_loaded when `name` is served already. Then loaded as any adapter; on failure forgotten.
   */
  async add(name: string, path: string): Promise<AdapterVersion> {
    if (this.has(name)) {
      throw new MultiloraError(`The lora adapter '${name}' has already been loaded.`, {
        code: "lora_already_loaded",
        param: "lora_name",
      });
    }
    this.adapterDir.checkName(name, "lora_name");
    this.extras.add(name, path);
    this.versionChanges++;
    try {
      return await this.get(name);
    } catch (e) {
      this.remove(name);
      throw e;
    }
  }

  /** Whether `name` was named at run time (`add`), not found in the LoRA dir. */
  isAdded(name: string): boolean {
    return this.extras.get(name) !== undefined;
  }

  /** Stops serving an adapter named by `add` (its loaded version forgotten too). */
  remove(name: string): void {
    if (!this.extras.get(name)) return;
    this.unload(name);
    this.extras.remove(name);
    this.failures.delete(name);
    this.versionChanges++;
  }

  /** The adapter's current version: the cached one when the file has not changed, else loaded anew. */
  async get(name: string): Promise<AdapterVersion> {
    const entry = this.entryOf(name);
    const fingerprint = fingerprintOf(entry, this.rootOf(name));
    const current = this.versions.get(name);
    if (current && current.fingerprint === fingerprint) return current;
    const failed = this.failures.get(name);
    if (failed && failed.fingerprint === fingerprint) throw failed.error;
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
      const entry = this.entryOf(version.name);
      const root = this.rootOf(version.name);
      // A PEFT folder's converted file is read back from the cache, or converted again when it was
      // trimmed; a changed folder or file fails the hash check.
      return entry.format === "peft"
        ? this.converted.read(version.name, entry.path, root)
        : this.readTrtllm(entry.path, root);
    });
  }

  /**
   * Forgets the loaded version of `name` and its host copy (after the engine released it): the next use
   * reads and hashes the file again, and listings show it as on disk.
   */
  unload(name: string): void {
    const version = this.versions.get(name);
    if (!version) return;
    this.versions.delete(name);
    this.hostCopies.drop(version.taskId);
    this.versionChanges++;
  }

  /** Every problem `name` has against this model, without loading it for the engine. */
  async validate(name: string): Promise<{ problems: string[]; warnings: string[] }> {
    try {
      const v = await this.get(name);
      return { problems: [], warnings: [...v.warnings] };
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
    try {
      const version = await this.read(entry, fingerprint);
      this.failures.delete(entry.name);
      if (!this.isAdded(entry.name)) this.adapterDir.markLoaded(entry.name);
      return version;
    } catch (e) {
      if (e instanceof AdapterInvalidError) {
        // An I/O failure may pass (a full or read-only cache dir): only the adapter's own faults are kept.
        if (!causedByIo(e)) this.failures.set(entry.name, { fingerprint, error: e });
        if (!this.isAdded(entry.name)) this.adapterDir.markBroken(entry.name, fingerprint);
      }
      throw e;
    }
  }

  /** Reads and validates the adapter: every check of the validate route, load and the engine. */
  private async read(entry: AdapterEntry, fingerprint: string): Promise<AdapterVersion> {
    const { name, format } = entry;
    this.loads++;
    const startedAt = performance.now();
    let read: { path: string; file: SafetensorsFile; sha256: string };
    let adapter: TrtllmAdapter;
    try {
      read =
        format === "trtllm"
          ? { path: entry.path, ...(await this.readTrtllm(entry.path, this.rootOf(name))) }
          : await this.converted.read(name, entry.path, this.rootOf(name));
      adapter = parseTrtllmAdapter(read.file);
    } catch (e) {
      throw e instanceof MultiloraError && e.code !== "invalid_lora" ? asInvalidLora(e) : e;
    }
    this.check(name, adapter);
    const sha256 = read.sha256;
    const taskId = this.taskIds.idOf(sha256);
    const bytes = read.file.bytes.length;
    this.hostCopies.keep(taskId, loraRefOf(adapter, taskId), bytes);
    const baseModel = adapter.file.metadata.base_model_name_or_path || undefined;
    const served = this.requirements.baseModelName;
    const version: AdapterVersion = {
      name,
      format,
      path: read.path,
      taskId,
      sha256,
      fingerprint,
      dtype: adapter.dtype,
      bytes,
      rows: adapter.rows.length,
      layers: new Set(adapter.rows.map((r) => r.layer)).size,
      ranks: [...new Set(adapter.rows.map((r) => r.rank))].sort((a, b) => a - b),
      modules: [...new Set(adapter.rows.map((r) => r.module))],
      baseModel,
      warnings:
        baseModel && served && baseModel !== served
          ? [`the adapter was trained on ${baseModel}, but the served model is ${served}`]
          : [],
      loadedAt: new Date(),
    };
    this.versions.set(name, version);
    this.versionChanges++;
    this.onLoad(name, (performance.now() - startedAt) / 1000);
    return version;
  }

  private readTrtllm(path: string, root: string): Promise<{ file: SafetensorsFile; sha256: string }> {
    return readAdapterSafetensors(path, { root, maxBytes: this.maxAdapterBytes });
  }

  /** The adapter `name`: one named at run time, else the LoRA dir's (400 bad name, 404 absent). */
  private entryOf(name: string): AdapterEntry {
    return this.extras.get(name) ?? this.adapterDir.locate(name);
  }

  /** The dir `name`'s files must stay in: its allowed dir, or the LoRA dir. */
  private rootOf(name: string): string {
    return this.extras.get(name)?.root ?? this.adapterDir.realDir;
  }

  /** The model adapters are checked against: the engine's config, or the checkpoint's dims. */
  private base(): BaseModel {
    const r = this.requirements;
    return r.engine ?? { path: r.modelPath, kind: "huggingface", architecture: undefined, dims: r.dims };
  }

  /** The engine's checks, before anything is sent: every problem in one 400. */
  private check(name: string, adapter: TrtllmAdapter): void {
    const r = this.requirements;
    const base = this.base();
    const problems = checkTrtllmAgainstBase(adapter, base);
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

/** Whether an I/O error (not the adapter's content) is anywhere in `e`'s causes. */
function causedByIo(e: unknown): boolean {
  for (let c = e; c instanceof Error; c = c.cause) {
    if (c instanceof MultiloraError && (c.code === "io_error" || c.code === "file_not_found")) return true;
  }
  return false;
}
