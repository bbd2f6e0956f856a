/**
 * Opening and reading adapter files, the one way every adapter file is opened (load, the validate route,
 * `inspect`, `extract`, the converted cache): confined to a root dir when one is given (every link on the
 * way is read, never followed, and must stay inside it), regular files only (checked before a
 * non-blocking open, so a FIFO or a device never blocks or floods the process), sizes capped before
 * anything is read, and safetensors files checked header first (the 8-byte length, then the JSON header
 * against the file's length and the cap) before their data is read. The async readers read off the
 * event loop, on the file-system thread pool.
 */
import { lstatSync, read, readlinkSync, readSync } from "node:fs";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { promisify } from "node:util";
import { MultiloraError } from "../errors.ts";
import { fileError, notRegularFile, type OpenFile, openForReading } from "../formats/files.ts";
import {
  headerLengthOf,
  parseSafetensors,
  parseSafetensorsHeader,
  type SafetensorsFile,
} from "../formats/safetensors-reader.ts";
import { sha256Stream } from "../formats/sha256.ts";

/** Config files (adapter_config.json) are at most this long. */
export const MAX_CONFIG_BYTES = 1 << 20;

export interface AdapterFileOptions {
  /** A real path: every file opened must be inside it, links included (the LoRA dir, the cache dir). */
  root?: string;
  /** The most bytes a weights file may have, and its header may declare (--max-adapter-mb). */
  maxBytes?: number;
}

/** Links followed on the way to one file, at most. */
const MAX_LINKS = 16;

/**
 * Where `path` leads, resolved one component at a time inside `root` (a real path): each link is read
 * (never followed by the kernel) and its target taken apart the same way, so nothing outside `root` is
 * ever looked at. "outside" when the path, or any link on the way, leads out; "missing" when a part is not
 * there.
 */
export function confinedPath(path: string, root: string): string | "missing" | "outside" {
  const rel = relative(root, resolve(path));
  if (rel.startsWith("..") || isAbsolute(rel)) return "outside";
  const pending = rel.split(sep).filter((p) => p !== "");
  let current = root;
  let links = 0;
  while (pending.length > 0) {
    const part = pending.shift() as string;
    if (part === ".") continue;
    if (part === "..") {
      if (current === root) return "outside";
      current = dirname(current);
      continue;
    }
    const next = join(current, part);
    let link: string;
    try {
      if (!lstatSync(next).isSymbolicLink()) {
        current = next;
        continue;
      }
      link = readlinkSync(next);
    } catch {
      return "missing";
    }
    if (++links > MAX_LINKS) return "outside";
    if (isAbsolute(link)) {
      if (link !== root && !link.startsWith(root + sep)) return "outside";
      current = root;
      pending.unshift(
        ...link
          .slice(root.length)
          .split("/")
          .filter((p) => p !== ""),
      );
    } else {
      pending.unshift(...link.split("/").filter((p) => p !== ""));
    }
  }
  return current;
}

/**
 * Opens the adapter file `path` for reading (see the file's comment); `maxBytes`, when given, caps its
 * size, with `limit` naming the cap in the message.
 */
export function openAdapterFile(
  path: string,
  options: AdapterFileOptions,
  maxBytes?: number,
  limit = "",
): OpenFile {
  let target = path;
  if (options.root !== undefined) {
    const confined = confinedPath(path, options.root);
    if (confined === "missing")
      throw fileError(path, Object.assign(new Error("missing"), { code: "ENOENT" }));
    if (confined === "outside") {
      throw new MultiloraError(`${path}: is a link that leads outside the LoRA dir`, {
        code: "invalid_adapter",
      });
    }
    target = confined;
    let stat: ReturnType<typeof lstatSync>;
    try {
      stat = lstatSync(target);
    } catch (e) {
      throw fileError(path, e, "read");
    }
    if (!stat.isFile()) throw notRegularFile(path, stat);
  }
  let file: OpenFile;
  try {
    file = openForReading(target, { noFollow: options.root !== undefined });
  } catch (e) {
    // Name the path as given, not where its links led.
    if (e instanceof MultiloraError && target !== path)
      throw new MultiloraError(e.message.replace(target, path), { code: e.code, cause: e });
    throw e;
  }
  if (maxBytes !== undefined && file.size > maxBytes) {
    file.close();
    throw new MultiloraError(`${path}: is ${file.size} bytes; ${limit || `the limit is ${maxBytes}`}`, {
      code: "invalid_adapter",
    });
  }
  return file;
}

/** A config file's text: a regular file of at most MAX_CONFIG_BYTES, checked before it is read. */
export function readConfigText(path: string, options: AdapterFileOptions = {}): string {
  const file = openAdapterFile(
    path,
    options,
    MAX_CONFIG_BYTES,
    `config files are at most ${MAX_CONFIG_BYTES}`,
  );
  try {
    const bytes = new Uint8Array(file.size);
    let done = 0;
    while (done < file.size) {
      const n = readSync(file.fd, bytes, done, file.size - done, done);
      if (n === 0) break;
      done += n;
    }
    return new TextDecoder().decode(bytes.subarray(0, done));
  } finally {
    file.close();
  }
}

/** A safetensors adapter file read into memory we own, parsed, and its sha256 (hex). */
export interface ReadAdapter {
  file: SafetensorsFile;
  sha256: Promise<string>;
}

/** The cap on a weights file, for messages. */
function capOf(options: AdapterFileOptions): string {
  const mb = (options.maxBytes ?? 0) / (1024 * 1024);
  return `larger than --max-adapter-mb ${Number.isInteger(mb) ? mb : mb.toFixed(2)}`;
}

const READ_CHUNK = 8 << 20;
const readAsync = promisify(read);

/** One read the steps below need: bytes [position, position + into.length) of the file into `into`. */
interface ReadRequest {
  into: Uint8Array;
  position: number;
}

/**
 * The reads of a safetensors adapter, in order, each yielded to a driver that does it (on this thread or
 * on the thread pool) and answers with the bytes read: the header length and JSON header first, checked
 * against the file, then the data into a SharedArrayBuffer while a worker hashes it, then the parse.
 */
function* readSteps(path: string, size: number): Generator<ReadRequest, ReadAdapter, number> {
  const prefix = new Uint8Array(Math.min(8, size));
  if (prefix.length > 0) yield* readFully(prefix, 0, path);
  const headerLength = headerLengthOf(prefix, size, path);
  const header = new Uint8Array(headerLength);
  yield* readFully(header, 8, path);
  parseSafetensorsHeader(header, size, path); // every declared size checked before the data is read
  const bytes = new Uint8Array(new SharedArrayBuffer(size));
  bytes.set(prefix);
  bytes.set(header, 8);
  const stream = sha256Stream(bytes);
  try {
    stream.advance(8 + headerLength);
    for (let done = 8 + headerLength; done < size; ) {
      const end = Math.min(size, done + READ_CHUNK);
      yield* readFully(bytes.subarray(done, end), done, path);
      done = end;
      stream.advance(done);
    }
  } catch (e) {
    stream.digest().catch(() => {});
    throw e;
  }
  const sha256 = stream.digest();
  try {
    return { file: parseSafetensors(bytes, path), sha256 };
  } catch (e) {
    sha256.catch(() => {});
    throw e;
  }
}

function* readFully(into: Uint8Array, position: number, path: string): Generator<ReadRequest, void, number> {
  for (let done = 0; done < into.length; ) {
    const n = yield { into: into.subarray(done), position: position + done };
    if (n === 0) throw new MultiloraError(`${path}: file shrank while it was read`, { code: "io_error" });
    done += n;
  }
}

/** Reads a safetensors adapter off the event loop, the checks above first; the server's way. */
export async function readAdapterSafetensors(
  path: string,
  options: AdapterFileOptions = {},
): Promise<{ file: SafetensorsFile; sha256: string }> {
  const file = openAdapterFile(path, options, options.maxBytes, capOf(options));
  try {
    const steps = readSteps(path, file.size);
    for (let step = steps.next(); ; ) {
      if (step.done) return { file: step.value.file, sha256: await step.value.sha256 };
      const { into, position } = step.value;
      let n: number;
      try {
        n = (await readAsync(file.fd, into, 0, into.length, position)).bytesRead;
      } catch (e) {
        step = steps.throw(fileError(path, e, "read"));
        continue;
      }
      step = steps.next(n);
    }
  } finally {
    file.close();
  }
}

/** Reads a safetensors adapter on this thread, with the same checks first (the CLI's way). */
export function readAdapterSafetensorsSync(path: string, options: AdapterFileOptions = {}): ReadAdapter {
  const file = openAdapterFile(path, options, options.maxBytes, capOf(options));
  try {
    const steps = readSteps(path, file.size);
    for (let step = steps.next(); ; ) {
      if (step.done) return step.value;
      const { into, position } = step.value;
      step = steps.next(readSync(file.fd, into, 0, into.length, position));
    }
  } finally {
    file.close();
  }
}
