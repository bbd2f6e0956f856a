/**
 * The LoRA dir: which names are adapters (`<dir>/<name>.safetensors`, TensorRT-LLM's format, or a PEFT
 * folder `<dir>/<name>/` with an adapter_config.json), confined to the dir (no absolute paths, no `..`,
 * no link that leads outside, checked before anything outside is looked at), and each adapter's
 * fingerprint, to notice a changed file.
 *
 * The listing is kept in memory and scanned again only when something may have changed: a watcher on the
 * dir marks it stale on any event, and each call checks the mtime of the dir and of every folder in it
 * (a PEFT folder filled after it appeared changes its own mtime, not the dir's). The mtime check does not
 * wait for the watcher, so a file written just before a request is already listed for it.
 *
 * `servable()` is the listing without what cannot serve: a file whose header declares more than the file
 * holds (half-copied), a FIFO or other non-file, a PEFT folder without its weights, or an adapter whose
 * load failed for its current fingerprint (`markBroken`). Those few are watched by fingerprint, so they
 * are listed again once they change.
 */
import { type FSWatcher, lstatSync, readdirSync, readSync, realpathSync, statSync, watch } from "node:fs";
import { join } from "node:path";
import { MultiloraError } from "../errors.ts";
import { headerLengthOf, parseSafetensorsHeader } from "../formats/safetensors-reader.ts";
import { confinedPath, MAX_CONFIG_BYTES, openAdapterFile } from "./adapter-files.ts";

export type AdapterFormat = "trtllm" | "peft";

/**
 * How fresh a listing must be. "now": checked against the disk at this call. "this-turn": checked at
 * least once in this turn of the event loop, which is as fresh for anything that reached the server
 * through a socket: a request read in this turn was sent before the turn began, so a change its sender
 * made first was made before the turn's check too. Requests use it; code that changes the dir and lists
 * it in one go must use "now".
 */
export type Freshness = "now" | "this-turn";

/** An adapter in the LoRA dir, by name. */
export interface AdapterEntry {
  name: string;
  format: AdapterFormat;
  /** Its file or folder, links followed (always inside the LoRA dir). */
  path: string;
}

const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

/**
 * A folder's mtime is trusted to show the next change only once it is this much older than the scan that
 * read it: timestamps are coarse (the kernel's clock tick, or whole seconds on some filesystems), so a
 * change just after a scan may leave the mtime as it was.
 */
const RACY_NS = 2_000_000_000n;

interface Listing {
  byName: Map<string, AdapterEntry>;
  sorted: AdapterEntry[];
  /** The mtime (ns) of the dir and of each folder in it, read before the scan looked inside. */
  mtimes: Map<string, bigint>;
  /** Wall-clock time (ns) when the scan began. */
  scannedAt: bigint;
  /** The entries that can serve, once asked for, and the fingerprints of those left out. */
  servable?: { entries: AdapterEntry[]; suspects: Map<AdapterEntry, string> };
}

/** A header longer than this is not read to list a file (its load checks it). */
const LISTING_HEADER_BYTES = 1 << 20;

export class AdapterDir {
  /** The dir's real path: every adapter's path is inside it. */
  readonly realDir: string;
  /** How many times the dir was scanned (listings in between came from memory). */
  scans = 0;
  private listing: Listing | null = null;
  /** The listing was checked against the disk during this turn of the event loop. */
  private checkedThisTurn = false;
  private watcher: FSWatcher | null = null;
  /** Adapters whose load failed, with the fingerprint they had. */
  private readonly broken = new Map<string, string>();

  constructor(readonly dir: string) {
    try {
      this.realDir = realpathSync(dir);
      if (!statSync(this.realDir).isDirectory()) throw new Error("not a directory");
    } catch (e) {
      throw new MultiloraError(`LoRA dir ${dir} cannot be used: ${(e as Error).message}`, {
        code: "invalid_lora_dir",
      });
    }
    this.watcher = this.watch();
  }

  /** Every adapter in the dir, by name (see `Freshness`). */
  list(freshness: Freshness = "now"): readonly AdapterEntry[] {
    return this.current(freshness).sorted;
  }

  /**
   * The adapters that can serve, as far as their headers tell (see the file's comment); the same array
   * while nothing changed.
   */
  servable(freshness: Freshness = "now"): readonly AdapterEntry[] {
    const listing = this.current(freshness);
    listing.servable ??= this.servableOf(listing.sorted);
    return listing.servable.entries;
  }

  /** The fingerprint of `entry`'s files (links inside the dir followed, none outside it). */
  fingerprint(entry: AdapterEntry): string {
    return fingerprintOf(entry, this.realDir);
  }

  /** `name` failed to load with this fingerprint: it is not servable until it changes. */
  markBroken(name: string, fingerprint: string): void {
    if (this.broken.get(name) === fingerprint) return;
    this.broken.set(name, fingerprint);
    if (this.listing) this.listing.servable = undefined;
  }

  /** `name` loaded: whatever failed before is forgotten. */
  markLoaded(name: string): void {
    if (this.broken.delete(name) && this.listing) this.listing.servable = undefined;
  }

  /** Whether `name` is an adapter in the dir (false for any name that is not one, valid or not). */
  has(name: string, freshness: Freshness = "now"): boolean {
    return this.current(freshness).byName.has(name);
  }

  /** The file or folder for `name`, looked up now; 400 for a bad name, 404 when absent. */
  locate(name: string): AdapterEntry {
    this.checkName(name);
    const candidates: [AdapterFormat, string][] = [
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
      if (format === "peft" && !isPeftFolder(target)) continue;
      return { name, format, path: target };
    }
    throw new MultiloraError(`adapter "${name}" does not exist in the LoRA dir`, {
      code: "lora_not_found",
      param: "lora_model",
    });
  }

  /** 400 unless `name` may name an adapter: letters, digits, '_', '-' and '.', without '/' or '..'. */
  checkName(name: string, param = "lora_model"): void {
    if (!NAME.test(name) || name.includes("..")) {
      throw new MultiloraError(
        `invalid adapter name ${JSON.stringify(name)}: use letters, digits, '_', '-' and '.', without '/' or '..'`,
        { code: "invalid_lora_name", param },
      );
    }
  }

  /** Stops watching the dir (listings still stay current, by the mtime check alone). */
  close(): void {
    this.watcher?.close();
    this.watcher = null;
  }

  /** The listing in memory, scanned again when the watcher or an mtime says the dir may have changed. */
  private current(freshness: Freshness): Listing {
    const l = this.listing;
    if (l !== null && freshness === "this-turn" && this.checkedThisTurn) return l;
    const unchanged =
      l !== null &&
      [...l.mtimes].every(([path, mtime]) => mtime < l.scannedAt - RACY_NS && mtimeOf(path) === mtime) &&
      [...(l.servable?.suspects ?? [])].every(
        ([entry, fingerprint]) => fingerprintOf(entry, this.realDir) === fingerprint,
      );
    if (!unchanged) this.listing = this.scan();
    if (!this.checkedThisTurn) {
      this.checkedThisTurn = true;
      setImmediate(() => {
        this.checkedThisTurn = false;
      });
    }
    return this.listing as Listing;
  }

  private scan(): Listing {
    this.scans++;
    const scannedAt = BigInt(Date.now()) * 1_000_000n;
    const mtimes = new Map([[this.realDir, statSync(this.realDir, { bigint: true }).mtimeNs]]);
    const byName = new Map<string, AdapterEntry>();
    for (const entry of readdirSync(this.realDir)) {
      const target = this.confined(join(this.realDir, entry));
      if (target === "missing" || target === "outside") continue; // links that lead out are not adapters
      if (entry.endsWith(".safetensors") && !entry.startsWith(".")) {
        const name = entry.slice(0, -".safetensors".length);
        if (NAME.test(name)) byName.set(name, { name, format: "trtllm", path: target });
      } else if (NAME.test(entry)) {
        const mtime = folderMtimeOf(target);
        if (mtime === undefined) continue;
        mtimes.set(target, mtime); // read before looking inside, so a later fill is seen as a change
        if (!byName.has(entry) && isPeftFolder(target))
          byName.set(entry, { name: entry, format: "peft", path: target });
      }
    }
    const sorted = [...byName.values()].sort((a, b) => a.name.localeCompare(b.name));
    return { byName, sorted, mtimes, scannedAt };
  }

  private servableOf(sorted: AdapterEntry[]): NonNullable<Listing["servable"]> {
    const suspects = new Map<AdapterEntry, string>();
    const entries = sorted.filter((entry) => {
      const fingerprint = fingerprintOf(entry, this.realDir);
      const whole = this.broken.get(entry.name) !== fingerprint && this.looksWhole(entry);
      if (!whole) suspects.set(entry, fingerprint);
      return whole;
    });
    return { entries, suspects };
  }

  /** Whether an adapter's files are there, regular, and as long as their headers say. */
  private looksWhole(entry: AdapterEntry): boolean {
    if (entry.format === "trtllm") return this.headerFits(entry.path);
    const config = confinedPath(join(entry.path, "adapter_config.json"), this.realDir);
    if (config === "missing" || config === "outside") return false;
    try {
      const s = lstatSync(config);
      if (!s.isFile() || s.size === 0 || s.size > MAX_CONFIG_BYTES) return false;
    } catch {
      return false;
    }
    return this.headerFits(join(entry.path, "adapter_model.safetensors"));
  }

  /** Whether `path` is a regular file in the dir whose safetensors header fits it (unread when long). */
  private headerFits(path: string): boolean {
    try {
      const file = openAdapterFile(path, { root: this.realDir });
      try {
        const prefix = new Uint8Array(Math.min(8, file.size));
        readSync(file.fd, prefix, 0, prefix.length, 0);
        const length = headerLengthOf(prefix, file.size, path);
        if (length > LISTING_HEADER_BYTES) return true;
        const header = new Uint8Array(length);
        if (readSync(file.fd, header, 0, length, 8) !== length) return false;
        parseSafetensorsHeader(header, file.size, path);
        return true;
      } finally {
        file.close();
      }
    } catch {
      return false;
    }
  }

  /** A watcher that marks the listing stale on any event; none where the system has no watch to give. */
  private watch(): FSWatcher | null {
    try {
      const watcher = watch(this.realDir, { persistent: false }, () => {
        this.listing = null;
      });
      watcher.on("error", () => {
        this.listing = null;
        this.close();
      });
      watcher.unref?.();
      return watcher;
    } catch {
      return null; // e.g. out of inotify watches: the mtime check alone keeps listings current
    }
  }

  /**
   * Where `path` (an entry of the LoRA dir) leads, following links by reading them only: a link's target
   * is checked as a path before anything there is looked at, so no file outside the dir is ever touched.
   */
  private confined(path: string): string | "missing" | "outside" {
    return confinedPath(path, this.realDir);
  }
}

/**
 * (device, inode, size, mtime and ctime in ns) of the file that holds the weights, and of a PEFT config.
 * The ctime catches a rewrite that put the old size and mtime back; a fingerprint that changed only by it
 * costs a re-read and a hash, which tells whether the content changed.
 */
export function fingerprintOf(entry: Pick<AdapterEntry, "format" | "path">, root?: string): string {
  const files =
    entry.format === "trtllm"
      ? [entry.path]
      : [join(entry.path, "adapter_model.safetensors"), join(entry.path, "adapter_config.json")];
  return files
    .map((f) => {
      const target = root === undefined ? f : confinedPath(f, root);
      if (target === "missing" || target === "outside") return target;
      try {
        const s = statSync(target, { bigint: true });
        return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
      } catch {
        return "missing";
      }
    })
    .join("|");
}

function isPeftFolder(path: string): boolean {
  try {
    if (!statSync(path).isDirectory()) return false;
    lstatSync(join(path, "adapter_config.json")); // a link is looked at, not followed
    return true;
  } catch {
    return false;
  }
}

/** The mtime (ns) of `path` if it is a folder. */
function folderMtimeOf(path: string): bigint | undefined {
  try {
    const s = statSync(path, { bigint: true });
    return s.isDirectory() ? s.mtimeNs : undefined;
  } catch {
    return undefined;
  }
}

/** The mtime (ns) of `path`, or -1 when it cannot be read (gone, so changed). */
function mtimeOf(path: string): bigint {
  try {
    return statSync(path, { bigint: true }).mtimeNs;
  } catch {
    return -1n;
  }
}
