/**
 * A strict safetensors reader over bytes already in memory: a file read into memory we own
 * (`readSafetensors`), or a memory map (`mmapSafetensors`, for model weights that never change while
 * they are served).
 *
 * Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N, N bytes of
 * JSON (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, maybe padded
 * with spaces), then the data block. Offsets are relative to the data block, which they must cover exactly:
 * no gaps, no overlaps, nothing past its end.
 *
 * Every error names the file and what is wrong with it.
 */
import { readSync } from "node:fs";
import { MultiloraError } from "../errors.ts";
import { type DType, dtypeSize, isDType, type TypedView, typedView } from "./dtypes.ts";
import { openForReading } from "./files.ts";
import { type Sha256Stream, sha256Stream } from "./sha256.ts";

/** The largest header we accept: the reference implementation's limit. */
export const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Element count (product of the shape; 1 for a scalar). */
  readonly length: number;
  /** Byte range in the file (absolute, header included). */
  readonly begin: number;
  readonly end: number;
}

export class SafetensorsFile {
  /** Tensors in the order of their data (by offset). */
  readonly tensors: ReadonlyMap<string, TensorInfo>;

  constructor(
    /** Where the bytes came from, for messages. */
    readonly path: string,
    /** The whole file. */
    readonly bytes: Uint8Array,
    /** Where the data block starts (8 + header length). */
    readonly dataStart: number,
    /** `__metadata__`, string to string. */
    readonly metadata: Readonly<Record<string, string>>,
    tensors: TensorInfo[],
  ) {
    this.tensors = new Map(tensors.map((t) => [t.name, t]));
  }

  get names(): string[] {
    return [...this.tensors.keys()];
  }

  /** The tensor's description; throws naming the file when it is absent. */
  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw invalid(this.path, `has no tensor "${name}"`);
    return info;
  }

  /** The tensor's raw bytes (a view into the file, never a copy). */
  rawBytes(name: string): Uint8Array {
    const t = this.info(name);
    return this.bytes.subarray(t.begin, t.end);
  }

  /**
   * A typed view of the tensor's elements: zero-copy when its data is aligned to the element size,
   * otherwise a copy (safetensors does not promise alignment). F16 and BF16 come as raw bits
   * (Uint16Array), BOOL and F8 as bytes.
   */
  view(name: string): TypedView {
    const t = this.info(name);
    const size = dtypeSize(t.dtype);
    const offset = this.bytes.byteOffset + t.begin;
    if (offset % size === 0) return typedView(t.dtype, this.bytes.buffer, offset, t.length);
    const copy = this.bytes.slice(t.begin, t.end);
    return typedView(t.dtype, copy.buffer, 0, t.length);
  }
}

function invalid(path: string, what: string): MultiloraError {
  return new MultiloraError(`${path}: ${what}`, { code: "invalid_safetensors" });
}

/** Parses and validates a whole safetensors file held in `bytes`. */
export function parseSafetensors(bytes: Uint8Array, path: string): SafetensorsFile {
  const headerLength = headerLengthOf(bytes, bytes.length, path);
  const header = parseSafetensorsHeader(bytes.subarray(8, 8 + headerLength), bytes.length, path);
  return new SafetensorsFile(path, bytes, header.dataStart, header.metadata, header.tensors);
}

/** What a safetensors header says: where the data starts, the metadata and every tensor's place. */
export interface SafetensorsHeader {
  dataStart: number;
  metadata: Record<string, string>;
  /** Sorted by offset, tiling the data block of a file `fileLength` long. */
  tensors: TensorInfo[];
}

/**
 * The header length a file of `fileLength` bytes declares in its first 8 bytes (`prefix`), checked
 * against the format's limit and the file's length: what to read next, before anything else is read.
 */
export function headerLengthOf(prefix: Uint8Array, fileLength: number, path: string): number {
  if (prefix.length < 8 || fileLength < 8) {
    throw invalid(
      path,
      `is ${Math.min(prefix.length, fileLength)} bytes long, too short for a safetensors file (8-byte header length)`,
    );
  }
  const headerLength = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (headerLength < 2n || headerLength > BigInt(MAX_HEADER_BYTES)) {
    throw invalid(
      path,
      `header length ${headerLength} is outside 2..${MAX_HEADER_BYTES}: not a safetensors file`,
    );
  }
  if (8 + Number(headerLength) > fileLength) {
    throw invalid(
      path,
      `header length ${headerLength} runs past the end of the file (${fileLength} bytes): the file is truncated`,
    );
  }
  return Number(headerLength);
}

/**
 * Parses and checks the JSON header (`headerBytes`, after the 8-byte length) of a file `fileLength` bytes
 * long: every tensor's dtype, shape and offsets, tiling the data block to the file's end. Needs no data.
 */
export function parseSafetensorsHeader(
  headerBytes: Uint8Array,
  fileLength: number,
  path: string,
): SafetensorsHeader {
  const dataStart = 8 + headerBytes.length;
  const header = parseHeaderJson(headerBytes, path);

  let metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  const problems: string[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = parseMetadata(entry, path);
      continue;
    }
    const tensor = parseTensorEntry(name, entry, dataStart, problems);
    if (tensor) tensors.push(tensor);
  }
  if (problems.length > 0) throw invalid(path, problems.join("; "));

  checkCoverage(tensors, dataStart, fileLength, path);
  return { dataStart, metadata, tensors };
}

function parseHeaderJson(headerBytes: Uint8Array, path: string): Record<string, unknown> {
  // Checked on the raw bytes: TextDecoder would silently drop a leading byte-order mark.
  if (headerBytes[0] !== 0x7b) throw invalid(path, "header does not start with '{': not a safetensors file");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
  } catch {
    throw invalid(path, "header is not valid UTF-8");
  }
  try {
    return JSON.parse(text) as Record<string, unknown>; // an object: the text starts with '{'
  } catch (e) {
    throw invalid(path, `header is not valid JSON (${(e as Error).message})`);
  }
}

function parseMetadata(entry: unknown, path: string): Record<string, string> {
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    throw invalid(path, "__metadata__ is not an object");
  }
  for (const [key, value] of Object.entries(entry)) {
    if (typeof value !== "string") throw invalid(path, `__metadata__ value of "${key}" is not a string`);
  }
  return entry as Record<string, string>;
}

function isIndex(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function parseTensorEntry(
  name: string,
  entry: unknown,
  dataStart: number,
  problems: string[],
): TensorInfo | undefined {
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    problems.push(`tensor "${name}" is not an object`);
    return undefined;
  }
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (typeof dtype !== "string" || !isDType(dtype)) {
    problems.push(`tensor "${name}" has unsupported dtype ${JSON.stringify(dtype)}`);
    return undefined;
  }
  if (!Array.isArray(shape) || !shape.every(isIndex)) {
    problems.push(`tensor "${name}" has an invalid shape ${JSON.stringify(shape)}`);
    return undefined;
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex)) {
    problems.push(`tensor "${name}" has invalid data_offsets ${JSON.stringify(offsets)}`);
    return undefined;
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) {
    problems.push(`tensor "${name}" has data_offsets [${begin}, ${end}] that end before they begin`);
    return undefined;
  }
  const length = shape.reduce((a: number, b: number) => a * b, 1);
  if (length * dtypeSize(dtype) !== end - begin) {
    problems.push(
      `tensor "${name}" has shape [${shape.join(", ")}] x ${dtype} = ${length * dtypeSize(dtype)} bytes ` +
        `but data_offsets [${begin}, ${end}] span ${end - begin} bytes`,
    );
    return undefined;
  }
  return { name, dtype, shape, length, begin: dataStart + begin, end: dataStart + end };
}

/** The tensors' byte ranges must tile the data block exactly. Sorts `tensors` by offset. */
function checkCoverage(tensors: TensorInfo[], dataStart: number, fileLength: number, path: string): void {
  tensors.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = dataStart;
  for (const t of tensors) {
    if (t.begin > expected) {
      throw invalid(path, `gap of ${t.begin - expected} bytes in the data block before tensor "${t.name}"`);
    }
    if (t.begin < expected) throw invalid(path, `tensor "${t.name}" overlaps the tensor before it`);
    expected = t.end;
  }
  if (expected > fileLength) {
    throw invalid(
      path,
      `tensor data ends at byte ${expected} but the file has ${fileLength} bytes: the file is truncated`,
    );
  }
  if (expected < fileLength) {
    throw invalid(path, `${fileLength - expected} bytes after the last tensor belong to no tensor`);
  }
}

/**
 * Reads a whole file into memory we own, in 8 MiB calls (the extract benchmark's plain-copy baseline makes
 * the same calls). `onChunk(bytes, end)` is told after each call that bytes [0, end) are in place.
 *
 * With `shared`, the memory is a SharedArrayBuffer, so a worker can hash it while it is read and used.
 */
export function readFileBytes(
  path: string,
  options: { shared?: boolean; onChunk?: (bytes: Uint8Array, end: number) => void } = {},
): Uint8Array {
  const { fd, size, close } = openForReading(path);
  try {
    const bytes = new Uint8Array(options.shared ? new SharedArrayBuffer(size) : new ArrayBuffer(size));
    let done = 0;
    while (done < size) {
      const n = readSync(fd, bytes, done, Math.min(READ_CHUNK, size - done), done);
      if (n === 0) throw new MultiloraError(`${path}: file shrank while it was read`, { code: "io_error" });
      done += n;
      options.onChunk?.(bytes, done);
    }
    return bytes;
  } finally {
    close();
  }
}

const READ_CHUNK = 8 << 20;

/** Reads `path` into memory we own and hashes it on the way (sha256, hex; off the main thread when big). */
export function readFileHashed(path: string): { bytes: Uint8Array; sha256: Promise<string> } {
  let stream: Sha256Stream | undefined;
  const bytes = readFileBytes(path, {
    shared: true,
    onChunk: (filling, end) => {
      stream ??= sha256Stream(filling);
      stream.advance(end);
    },
  });
  return { bytes, sha256: (stream ?? sha256Stream(bytes)).digest() };
}

/** Reads `path` into memory we own and parses it (for adapters, which may be rewritten while we serve). */
export function readSafetensors(path: string): SafetensorsFile {
  return parseSafetensors(readFileBytes(path), path);
}

/** Memory-maps `path` (no copy) and parses it: for model weights, which are not replaced while serving. */
export function mmapSafetensors(path: string): SafetensorsFile {
  const { size, close } = openForReading(path); // the same clear errors as a read for a missing file
  close();
  // Bun.mmap cannot map an empty file; the parser gives the same error for it either way.
  return parseSafetensors(size === 0 ? new Uint8Array(0) : Bun.mmap(path, { shared: false }), path);
}
