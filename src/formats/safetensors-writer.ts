/**
 * A streaming safetensors writer. The header is written first (shapes are known up front), tensor data is
 * appended in order, and the file only appears under its name when `commit()` renames the finished
 * temporary file into place: a failure at any point leaves no partial output.
 */

import { randomUUID } from "node:crypto";
import { closeSync, existsSync, fstatSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { MultiloraError } from "../errors.ts";
import { type DType, dtypeSize } from "./dtypes.ts";
import { fileError } from "./files.ts";

export interface TensorSpec {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
}

export interface TensorData extends TensorSpec {
  readonly data: ArrayBufferView;
}

function byteLength(spec: TensorSpec): number {
  return spec.shape.reduce((a, b) => a * b, 1) * dtypeSize(spec.dtype);
}

/**
 * The header bytes for `specs` laid out in order, padded with spaces so the data block starts at a
 * multiple of 8 (every tensor whose offset is a multiple of its element size is then aligned in memory).
 */
export function encodeHeader(
  specs: readonly TensorSpec[],
  metadata: Readonly<Record<string, string>>,
): Uint8Array {
  // No prototype: a tensor named "__proto__" must become a key like any other.
  const header: Record<string, unknown> = Object.create(null);
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const spec of specs) {
    if (spec.name === "__metadata__" || Object.hasOwn(header, spec.name)) {
      throw new MultiloraError(`tensor name "${spec.name}" is reserved or used twice`, {
        code: "invalid_tensor",
      });
    }
    const size = byteLength(spec);
    header[spec.name] = { dtype: spec.dtype, shape: spec.shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

export class SafetensorsWriter {
  private written = 0;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly tempPath: string,
    private readonly fd: number,
    private readonly specs: readonly TensorSpec[],
    private readonly headerLength: number,
    /** Bytes of tensor data the specs call for. */
    readonly dataLength: number,
  ) {}

  /** Size of the finished file. */
  get fileLength(): number {
    return this.headerLength + this.dataLength;
  }

  /** Creates the temporary file next to `path` and writes the header. */
  static create(
    path: string,
    specs: readonly TensorSpec[],
    metadata: Readonly<Record<string, string>> = {},
  ): SafetensorsWriter {
    const header = encodeHeader(specs, metadata);
    const dir = dirname(path);
    if (!existsSync(dir)) {
      throw new MultiloraError(`${path}: the output directory ${dir} does not exist`, {
        code: "file_not_found",
      });
    }
    const tempPath = join(dir, `.${basename(path)}.tmp-${process.pid}-${randomUUID()}`);
    let fd: number;
    try {
      fd = openSync(tempPath, "wx", 0o644);
    } catch (e) {
      throw fileError(path, e, "write");
    }
    const dataLength = specs.reduce((sum, s) => sum + byteLength(s), 0);
    const writer = new SafetensorsWriter(path, tempPath, fd, specs, header.length, dataLength);
    writer.guard(() => writeAll(fd, header, 0));
    return writer;
  }

  /** Appends tensor data (the tensors' bytes back to back, in the order of the specs). */
  write(chunk: Uint8Array): void {
    if (this.closed)
      throw new MultiloraError(`${this.path}: write after the file was closed`, { code: "io_error" });
    if (this.written + chunk.length > this.dataLength) {
      this.abort();
      throw new MultiloraError(
        `${this.path}: ${this.written + chunk.length} bytes of tensor data written, the header declares ${this.dataLength}`,
        { code: "io_error" },
      );
    }
    this.guard(() => writeAll(this.fd, chunk, this.headerLength + this.written));
    this.written += chunk.length;
  }

  /**
   * Replaces the metadata, e.g. with a hash known only at the end. The new header must encode to the same
   * padded length as the first (values of fixed length, such as a sha256, guarantee that).
   */
  setMetadata(metadata: Readonly<Record<string, string>>): void {
    this.checkOpen();
    const header = encodeHeader(this.specs, metadata);
    if (header.length !== this.headerLength) {
      this.abort();
      throw new MultiloraError(`${this.path}: new metadata changes the header length`, { code: "io_error" });
    }
    this.guard(() => writeAll(this.fd, header, 0));
  }

  /** Checks that every declared byte was written, then moves the file into place. */
  commit(): void {
    this.checkOpen();
    if (this.written !== this.dataLength) {
      this.abort();
      throw new MultiloraError(
        `${this.path}: only ${this.written} of ${this.dataLength} bytes of tensor data were written`,
        { code: "io_error" },
      );
    }
    this.guard(() => {
      const size = fstatSync(this.fd).size;
      if (size !== this.headerLength + this.dataLength)
        throw new Error(`file is ${size} bytes after writing`);
      closeSync(this.fd);
      this.closed = true;
      renameSync(this.tempPath, this.path);
    });
  }

  /** Closes and removes the temporary file. Safe to call more than once. */
  abort(): void {
    if (!this.closed) {
      this.closed = true;
      try {
        closeSync(this.fd);
      } catch {}
    }
    try {
      unlinkSync(this.tempPath);
    } catch {}
  }

  /** The descriptor may belong to another file once closed: every operation checks first. */
  private checkOpen(): void {
    if (this.closed) {
      throw new MultiloraError(`${this.path}: the writer was already committed or aborted`, {
        code: "io_error",
      });
    }
  }

  /** Runs an I/O step; on failure removes the temporary file and reports the error against `path`. */
  private guard(step: () => void): void {
    try {
      step();
    } catch (e) {
      this.abort();
      throw e instanceof MultiloraError ? e : fileError(this.path, e, "write");
    }
  }
}

function writeAll(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}

/** Writes whole tensors held in memory, atomically. */
export function writeSafetensors(
  path: string,
  tensors: readonly TensorData[],
  metadata: Readonly<Record<string, string>> = {},
): void {
  const writer = SafetensorsWriter.create(path, tensors, metadata);
  for (const t of tensors) {
    if (t.data.byteLength !== byteLength(t)) {
      writer.abort();
      throw new MultiloraError(
        `tensor "${t.name}": ${t.data.byteLength} bytes of data for shape [${t.shape.join(", ")}] ${t.dtype}`,
        { code: "invalid_tensor" },
      );
    }
    writer.write(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  writer.commit();
}
