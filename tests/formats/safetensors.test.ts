import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { MultiloraError } from "../../src/errors.ts";
import { DTYPE_SIZES, type DType } from "../../src/formats/dtypes.ts";
import {
  MAX_HEADER_BYTES,
  mmapSafetensors,
  parseSafetensors,
  readFileBytes,
  readFileHashed,
  readSafetensors,
  type SafetensorsFile,
} from "../../src/formats/safetensors-reader.ts";
import {
  encodeHeader,
  SafetensorsWriter,
  type TensorData,
  writeSafetensors,
} from "../../src/formats/safetensors-writer.ts";
import { VIEW_CLASS } from "../helpers/typed-arrays.ts";

// ---------------------------------------------------------------------------------------------------
// Helpers

const root = mkdtempSync(join(tmpdir(), "multilora-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let dirCount = 0;
/** A fresh empty directory for one test. */
function freshDir(): string {
  const dir = join(root, `d${dirCount++}`);
  mkdirSync(dir);
  return dir;
}

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");

/** A regex for a message that starts with `path: ` and then matches `problem`. */
const about = (path: string, problem: string): RegExp => new RegExp(`^${escapeRegExp(path)}: ${problem}`);

/** Builds safetensors bytes by hand: an explicit header length (default: the header's), header, data. */
function buildBytes(
  header: string | Uint8Array,
  data: Uint8Array = new Uint8Array(0),
  headerLength?: bigint,
): Uint8Array {
  const h = typeof header === "string" ? new TextEncoder().encode(header) : header;
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLength ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

function writeFile(dir: string, name: string, bytes: Uint8Array): string {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** Sample data of three elements for every dtype, covering extremes and special values. */
function sampleData(dtype: DType, n: number): ArrayBufferView {
  const pick = <T>(values: T[], i: number): T => values[i % values.length] as T;
  switch (dtype) {
    case "F64":
      return Float64Array.from({ length: n }, (_, i) =>
        pick([1.5, -0, Number.NaN, -Infinity, 5e-324, 1.7976931348623157e308, 0.1], i),
      );
    case "F32":
      return Float32Array.from({ length: n }, (_, i) =>
        pick([1.5, -0, Number.NaN, Infinity, 1e-45, 3.4e38, 0.1], i),
      );
    case "F16":
    case "BF16":
    case "U16":
      return Uint16Array.from({ length: n }, (_, i) =>
        pick([0x3c00, 0x8000, 0x7e01, 0xffff, 0x0001, 0x7f80], i),
      );
    case "I16":
      return Int16Array.from({ length: n }, (_, i) => pick([-32768, 32767, 0, -1], i));
    case "I32":
      return Int32Array.from({ length: n }, (_, i) => pick([-2147483648, 2147483647, 0, -1], i));
    case "U32":
      return Uint32Array.from({ length: n }, (_, i) => pick([0, 4294967295, 1, 0x80000000], i));
    case "I64":
      return BigInt64Array.from({ length: n }, (_, i) => pick([-(2n ** 63n), 2n ** 63n - 1n, 0n, -1n], i));
    case "U64":
      return BigUint64Array.from({ length: n }, (_, i) => pick([0n, 2n ** 64n - 1n, 1n, 2n ** 63n], i));
    case "I8":
      return Int8Array.from({ length: n }, (_, i) => pick([-128, 127, 0, -1], i));
    case "BOOL":
      return Uint8Array.from({ length: n }, (_, i) => pick([0, 1, 1, 0, 1], i));
    default:
      return Uint8Array.from({ length: n }, (_, i) => (i * 37 + 255) & 0xff);
  }
}

const ALL_DTYPES = Object.keys(DTYPE_SIZES) as DType[];

/** Writes the tensors of `file` again, in offset order, with its metadata. */
function rewrite(file: SafetensorsFile, path: string): void {
  writeSafetensors(
    path,
    [...file.tensors.values()].map((t) => ({
      name: t.name,
      dtype: t.dtype,
      shape: t.shape,
      data: file.rawBytes(t.name),
    })),
    file.metadata,
  );
}

// ---------------------------------------------------------------------------------------------------

describe("safetensors write/read round trip", () => {
  for (const dtype of ALL_DTYPES) {
    test(`round-trips ${dtype} tensors (2-D, scalar and zero-size) with exact values`, () => {
      const dir = freshDir();
      const path = join(dir, `${dtype}.safetensors`);
      const tensors: TensorData[] = [
        { name: "matrix", dtype, shape: [2, 3], data: sampleData(dtype, 6) },
        { name: "scalar", dtype, shape: [], data: sampleData(dtype, 1) },
        { name: "empty", dtype, shape: [0, 4], data: sampleData(dtype, 0) },
        { name: "vector", dtype, shape: [7], data: sampleData(dtype, 7) },
      ];
      writeSafetensors(path, tensors);
      const file = readSafetensors(path);
      expect(file.names).toEqual(["matrix", "scalar", "empty", "vector"]);
      expect(file.metadata).toEqual({});
      const size = DTYPE_SIZES[dtype];
      const wantInfo = [
        ["matrix", [2, 3], 6, 0],
        ["scalar", [], 1, 6 * size],
        ["empty", [0, 4], 0, 7 * size],
        ["vector", [7], 7, 7 * size],
      ] as const;
      for (const [name, shape, length, offset] of wantInfo) {
        const info = file.info(name);
        expect(info).toEqual({
          name,
          dtype,
          shape: [...shape],
          length,
          begin: file.dataStart + offset,
          end: file.dataStart + offset + length * size,
        });
      }
      for (const t of tensors) {
        const view = file.view(t.name);
        expect(view.constructor).toBe(VIEW_CLASS[dtype] as typeof Uint8Array);
        expect(view.length).toBe(t.shape.reduce((a, b) => a * b, 1));
        expect(Array.from(bytesOf(view))).toEqual(Array.from(bytesOf(t.data)));
        expect(Array.from(file.rawBytes(t.name))).toEqual(Array.from(bytesOf(t.data)));
        // Element values too (NaN compares equal to NaN here; -0 is checked through the bytes above).
        expect(Array.from(view as ArrayLike<number | bigint>)).toEqual(
          Array.from(t.data as unknown as ArrayLike<number>),
        );
      }
      expect(readFileSync(path).length).toBe(file.dataStart + 14 * size);
    });
  }

  test("round-trips a file holding every dtype at once, including misaligned ones, with exact bytes", () => {
    const dir = freshDir();
    const path = join(dir, "mixed.safetensors");
    // A 1-byte tensor first puts every later multi-byte tensor at an odd offset.
    const tensors: TensorData[] = [
      { name: "flag", dtype: "BOOL", shape: [1], data: new Uint8Array([1]) },
      ...ALL_DTYPES.map((dtype) => ({ name: `t_${dtype}`, dtype, shape: [3], data: sampleData(dtype, 3) })),
    ];
    writeSafetensors(path, tensors, { format: "pt", note: "mixed dtypes" });
    const file = readSafetensors(path);
    expect(file.names).toEqual(tensors.map((t) => t.name));
    expect(file.metadata).toEqual({ format: "pt", note: "mixed dtypes" });
    for (const t of tensors) {
      const view = file.view(t.name);
      expect(view.constructor).toBe(VIEW_CLASS[t.dtype] as typeof Uint8Array);
      expect(Array.from(bytesOf(view))).toEqual(Array.from(bytesOf(t.data)));
    }
  });

  test("round-trips metadata exactly, including unicode, empty and JSON-special strings", () => {
    const dir = freshDir();
    const path = join(dir, "meta.safetensors");
    const metadata = {
      format: "pt",
      empty: "",
      quote: 'a "quoted" \\ value\nwith a newline',
      unicode: "héllo wörld ✓ 🚀",
      json: '{"nested": [1, 2]}',
    };
    writeSafetensors(path, [{ name: "x", dtype: "F32", shape: [1], data: new Float32Array([2]) }], metadata);
    expect(readSafetensors(path).metadata).toEqual(metadata);
  });

  test("a file with no tensors and no metadata is the 8-byte length and a padded '{}'", () => {
    const dir = freshDir();
    const path = join(dir, "empty.safetensors");
    writeSafetensors(path, []);
    expect(Array.from(readFileSync(path))).toEqual([
      8, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0x7d, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
    ]);
    const file = readSafetensors(path);
    expect(file.names).toEqual([]);
    expect(file.metadata).toEqual({});
    expect(file.dataStart).toBe(16);
  });

  test("write -> read -> write gives identical bytes", () => {
    const dir = freshDir();
    const first = join(dir, "first.safetensors");
    const second = join(dir, "second.safetensors");
    writeSafetensors(
      first,
      [
        { name: "z.scalar", dtype: "F64", shape: [], data: new Float64Array([Math.PI]) },
        { name: "a.weight", dtype: "BF16", shape: [3, 2], data: sampleData("BF16", 6) },
        { name: "m.empty", dtype: "I64", shape: [0], data: new BigInt64Array(0) },
        { name: "b.bias", dtype: "U8", shape: [5], data: sampleData("U8", 5) },
      ],
      { format: "pt", hash: "0123456789abcdef" },
    );
    rewrite(readSafetensors(first), second);
    expect(Buffer.compare(readFileSync(first), readFileSync(second))).toBe(0);
  });

  test("the header is padded with spaces so the data block starts at a multiple of 8", () => {
    const pads = new Set<number>();
    for (let extra = 0; extra < 8; extra++) {
      const specs = [{ name: "w", dtype: "F32" as const, shape: [2] }];
      const header = encodeHeader(specs, { k: "v".repeat(extra) });
      const headerLength = Number(new DataView(header.buffer).getBigUint64(0, true));
      expect(header.length).toBe(8 + headerLength);
      expect(headerLength % 8).toBe(0);
      const json = JSON.stringify({
        __metadata__: { k: "v".repeat(extra) },
        w: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      });
      expect(new TextDecoder().decode(header.subarray(8, 8 + json.length))).toBe(json);
      const padding = header.subarray(8 + json.length);
      expect(padding.length).toBe(headerLength - json.length);
      expect(padding.length).toBeLessThan(8);
      expect(padding.every((b) => b === 0x20)).toBe(true);
      pads.add(padding.length);

      const dir = freshDir();
      const path = join(dir, "p.safetensors");
      writeSafetensors(path, [{ ...specs[0], data: new Float32Array([1, 2]) } as TensorData], {
        k: "v".repeat(extra),
      });
      const file = readSafetensors(path);
      expect(file.dataStart).toBe(header.length);
      expect(file.dataStart % 8).toBe(0);
    }
    expect([...pads].sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  test("encodeHeader refuses a tensor named __metadata__ and a name used twice", () => {
    expect(() => encodeHeader([{ name: "__metadata__", dtype: "U8", shape: [1] }], {})).toThrow(
      /tensor name "__metadata__" is reserved or used twice/,
    );
    expect(() =>
      encodeHeader(
        [
          { name: "a", dtype: "U8", shape: [1] },
          { name: "a", dtype: "U8", shape: [1] },
        ],
        {},
      ),
    ).toThrow(/tensor name "a" is reserved or used twice/);
  });

  test("a tensor named __proto__ round-trips like any other name", () => {
    const dir = freshDir();
    const path = join(dir, "proto.safetensors");
    writeSafetensors(path, [{ name: "__proto__", dtype: "U8", shape: [1], data: new Uint8Array([7]) }]);
    const file = readSafetensors(path);
    expect(file.names).toEqual(["__proto__"]);
    expect(Array.from(file.view("__proto__") as Uint8Array)).toEqual([7]);
  });

  test("writeSafetensors refuses data whose size does not match the shape and leaves no file", () => {
    const dir = freshDir();
    const path = join(dir, "bad.safetensors");
    expect(() =>
      writeSafetensors(path, [{ name: "w", dtype: "F32", shape: [2], data: new Uint8Array(7) }]),
    ).toThrow(/^tensor "w": 7 bytes of data for shape \[2\] F32$/);
    expect(readdirSync(dir)).toEqual([]);
  });

  test("info and rawBytes of an absent tensor throw naming the file and the tensor", () => {
    const dir = freshDir();
    const path = join(dir, "one.safetensors");
    writeSafetensors(path, [{ name: "a", dtype: "U8", shape: [1], data: new Uint8Array([1]) }]);
    const file = readSafetensors(path);
    expect(() => file.info("b")).toThrow(about(path, 'has no tensor "b"$'));
    expect(() => file.view("b")).toThrow(about(path, 'has no tensor "b"$'));
    expect(() => file.rawBytes("b")).toThrow(MultiloraError);
  });
});

describe("views and memory", () => {
  test("view() is zero-copy over the file's buffer when the data is aligned", () => {
    const dir = freshDir();
    const path = join(dir, "aligned.safetensors");
    writeSafetensors(path, [
      { name: "d", dtype: "F64", shape: [2], data: new Float64Array([1.25, -3]) },
      { name: "f", dtype: "F32", shape: [3], data: new Float32Array([1, 2, 3]) },
      { name: "h", dtype: "F16", shape: [1], data: new Uint16Array([0x3c00]) },
      { name: "b", dtype: "U8", shape: [3], data: new Uint8Array([9, 8, 7]) },
    ]);
    const file = readSafetensors(path);
    for (const name of ["d", "f", "h", "b"]) {
      const view = file.view(name);
      expect(view.buffer).toBe(file.bytes.buffer);
      expect(view.byteOffset).toBe(file.bytes.byteOffset + file.info(name).begin);
      const raw = file.rawBytes(name);
      expect(raw.buffer).toBe(file.bytes.buffer);
      expect(raw.byteOffset).toBe(file.bytes.byteOffset + file.info(name).begin);
    }
    const f = file.view("f") as Float32Array;
    expect(Array.from(f)).toEqual([1, 2, 3]);
    // Same memory: a write through the view shows in the file bytes.
    f[0] = 5;
    expect(Array.from(file.rawBytes("f").subarray(0, 4))).toEqual([0x00, 0x00, 0xa0, 0x40]);
  });

  test("view() copies misaligned F32 data correctly (header length makes the data start at an odd offset)", () => {
    const dir = freshDir();
    const json = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}';
    // Pad so that 8 + header length is 1 more than a multiple of 4.
    let header = json;
    while ((8 + header.length) % 4 !== 1) header += " ";
    const path = writeFile(dir, "mis.safetensors", buildBytes(header, bytesOf(new Float32Array([1.5, -2]))));
    const file = readSafetensors(path);
    expect(file.dataStart % 4).toBe(1);
    const view = file.view("a");
    expect(view).toBeInstanceOf(Float32Array);
    expect(view.buffer).not.toBe(file.bytes.buffer);
    expect(view.byteOffset).toBe(0);
    expect(Array.from(view as Float32Array)).toEqual([1.5, -2]);
    // A copy: writing to it leaves the file bytes alone.
    (view as Float32Array)[0] = 7;
    expect(Array.from(file.rawBytes("a").subarray(0, 4))).toEqual([0x00, 0x00, 0xc0, 0x3f]);
  });

  test("view() copies F64 data that is 4-aligned but not 8-aligned, and F16 at an odd offset", () => {
    const dir = freshDir();
    const json =
      '{"h":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"x":{"dtype":"U8","shape":[1],"data_offsets":[2,3]},"g":{"dtype":"F16","shape":[1],"data_offsets":[3,5]},"p":{"dtype":"U8","shape":[3],"data_offsets":[5,8]},"d":{"dtype":"F64","shape":[1],"data_offsets":[8,16]}}';
    let header = json;
    while ((8 + header.length) % 8 !== 4) header += " ";
    const data = new Uint8Array(16);
    data.set([0x00, 0x3c], 0); // h = 1.0
    data[2] = 0xaa;
    data.set([0x00, 0xc0], 3); // g = -2.0 at an odd offset
    new DataView(data.buffer).setFloat64(8, -0.375, true);
    const path = writeFile(dir, "mis64.safetensors", buildBytes(header, data));
    const file = readSafetensors(path);
    const d = file.view("d");
    expect(d).toBeInstanceOf(Float64Array);
    expect(d.buffer).not.toBe(file.bytes.buffer);
    expect(Array.from(d as Float64Array)).toEqual([-0.375]);
    const h = file.view("h");
    expect(h.buffer).toBe(file.bytes.buffer);
    expect(Array.from(h as Uint16Array)).toEqual([0x3c00]);
    const g = file.view("g");
    expect(g.buffer).not.toBe(file.bytes.buffer);
    expect(Array.from(g as Uint16Array)).toEqual([0xc000]);
    expect(Array.from(file.view("x") as Uint8Array)).toEqual([0xaa]);
  });

  test("view() accounts for the byteOffset of bytes that are a subarray of a larger buffer", () => {
    const json = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}';
    let header = json;
    while ((8 + header.length) % 8 !== 0) header += " ";
    const file = buildBytes(header, bytesOf(new Float32Array([3.5, -1])));
    for (const lead of [3, 8]) {
      const big = new Uint8Array(lead + file.length).fill(0xff);
      big.set(file, lead);
      const parsed = parseSafetensors(big.subarray(lead), "sub.safetensors");
      const view = parsed.view("a");
      expect(Array.from(view as Float32Array)).toEqual([3.5, -1]);
      if (lead === 8) {
        expect(view.buffer).toBe(big.buffer);
        expect(view.byteOffset).toBe(lead + parsed.dataStart);
      } else {
        expect(view.buffer).not.toBe(big.buffer);
      }
    }
  });

  test("mmapSafetensors parses a file and gives the same tensors, metadata and values as a read", () => {
    const dir = freshDir();
    const path = join(dir, "m.safetensors");
    writeSafetensors(
      path,
      [
        { name: "w", dtype: "F32", shape: [2, 2], data: new Float32Array([1, -2, 3.5, 0.25]) },
        { name: "i", dtype: "I64", shape: [2], data: new BigInt64Array([-5n, 6n]) },
        { name: "s", dtype: "BF16", shape: [], data: new Uint16Array([0x4049]) },
      ],
      { format: "pt" },
    );
    const mapped = mmapSafetensors(path);
    const read = readSafetensors(path);
    expect(mapped.path).toBe(path);
    expect(mapped.metadata).toEqual({ format: "pt" });
    expect([...mapped.tensors.values()]).toEqual([...read.tensors.values()]);
    expect(Array.from(mapped.view("w") as Float32Array)).toEqual([1, -2, 3.5, 0.25]);
    expect(Array.from(mapped.view("i") as BigInt64Array)).toEqual([-5n, 6n]);
    expect(Array.from(mapped.view("s") as Uint16Array)).toEqual([0x4049]);
    expect(Buffer.compare(Buffer.from(mapped.bytes), readFileSync(path))).toBe(0);
  });

  test("mmapSafetensors reports a missing file, a directory and a short file naming the path", () => {
    const dir = freshDir();
    const missing = join(dir, "missing.safetensors");
    expect(() => mmapSafetensors(missing)).toThrow(about(missing, "does not exist$"));
    expect(() => mmapSafetensors(dir)).toThrow(about(dir, "is a directory, not a file$"));
    const short = writeFile(dir, "short.safetensors", new Uint8Array(5));
    expect(() => mmapSafetensors(short)).toThrow(about(short, "is 5 bytes long, too short"));
  });

  test("mmapSafetensors of an empty file throws a MultiloraError naming the path", () => {
    const dir = freshDir();
    const empty = writeFile(dir, "empty.safetensors", new Uint8Array(0));
    expect(() => readSafetensors(empty)).toThrow(about(empty, "is 0 bytes long, too short"));
    expect(() => mmapSafetensors(empty)).toThrow(about(empty, "is 0 bytes long, too short"));
  });

  test("readFileBytes returns the file's bytes in an ArrayBuffer, or a SharedArrayBuffer with {shared: true}", () => {
    const dir = freshDir();
    const content = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) & 0xff);
    const path = writeFile(dir, "raw.bin", content);
    const plain = readFileBytes(path);
    expect(plain.buffer).toBeInstanceOf(ArrayBuffer);
    expect(plain.buffer instanceof SharedArrayBuffer).toBe(false);
    expect(Array.from(plain)).toEqual(Array.from(content));
    const shared = readFileBytes(path, { shared: true });
    expect(shared.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(shared.byteOffset).toBe(0);
    expect(shared.byteLength).toBe(1000);
    expect(Array.from(shared)).toEqual(Array.from(content));
    expect(readFileBytes(writeFile(dir, "zero.bin", new Uint8Array(0)), { shared: true }).length).toBe(0);
  });

  test("a file read into a SharedArrayBuffer parses and views it without copying", () => {
    const dir = freshDir();
    const path = join(dir, "s.safetensors");
    writeSafetensors(path, [{ name: "w", dtype: "F32", shape: [2], data: new Float32Array([4, 5]) }]);
    const file = parseSafetensors(readFileBytes(path, { shared: true }), path);
    expect(file.bytes.buffer).toBeInstanceOf(SharedArrayBuffer);
    const view = file.view("w");
    expect(view.buffer).toBe(file.bytes.buffer);
    expect(Array.from(view as Float32Array)).toEqual([4, 5]);
  });

  test("readFileBytes calls onChunk after each 8 MiB read with the bytes in place so far", () => {
    const dir = freshDir();
    const size = (8 << 20) + 5;
    const content = new Uint8Array(size);
    for (let i = 0; i < size; i += 4096) content[i] = (i >>> 12) & 0xff;
    content[size - 1] = 0x5a;
    const path = writeFile(dir, "big.bin", content);
    const calls: [number, number][] = [];
    let seen: Uint8Array | undefined;
    const bytes = readFileBytes(path, {
      onChunk: (filling, end) => {
        seen = filling;
        calls.push([end, filling[end - 1] as number]);
      },
    });
    expect(calls).toEqual([
      [8 << 20, content[(8 << 20) - 1] as number],
      [size, 0x5a],
    ]);
    expect(seen).toBe(bytes);
    expect(
      Buffer.compare(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length), Buffer.from(content.buffer)),
    ).toBe(0);
    const small: number[] = [];
    readFileBytes(writeFile(dir, "small.bin", new Uint8Array(10)), { onChunk: (_, end) => small.push(end) });
    expect(small).toEqual([10]);
    const none: number[] = [];
    readFileBytes(writeFile(dir, "none.bin", new Uint8Array(0)), { onChunk: (_, end) => none.push(end) });
    expect(none).toEqual([]);
  });

  test("readFileHashed returns the bytes and their sha256, for empty, small and worker-sized files", async () => {
    const dir = freshDir();
    const sizes = [0, 1000, (8 << 20) + 3]; // the last is hashed on a worker, over two reads
    for (const size of sizes) {
      const content = new Uint8Array(size);
      for (let i = 0; i < size; i++) content[i] = (i * 31 + (i >>> 9)) & 0xff;
      const path = writeFile(dir, `h${size}.bin`, content);
      const { bytes, sha256 } = readFileHashed(path);
      expect(bytes.length).toBe(size);
      expect(
        Buffer.compare(
          Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length),
          Buffer.from(content.buffer),
        ),
      ).toBe(0);
      expect(await sha256).toBe(createHash("sha256").update(content).digest("hex"));
    }
  });

  test("readFileBytes and readSafetensors report a missing file and a directory", () => {
    const dir = freshDir();
    const missing = join(dir, "nope.safetensors");
    for (const read of [readFileBytes, readSafetensors]) {
      expect(() => read(missing)).toThrow(about(missing, "does not exist$"));
      expect(() => read(dir)).toThrow(about(dir, "is a directory, not a file$"));
    }
    try {
      readSafetensors(missing);
    } catch (e) {
      expect(e).toBeInstanceOf(MultiloraError);
      expect((e as MultiloraError).code).toBe("file_not_found");
    }
  });
});

// ---------------------------------------------------------------------------------------------------
// A real adapter written by PEFT (Python safetensors)

const FIXTURE = resolve(
  import.meta.dir,
  "../../../shared/fixtures/smollm2-360m-instruct-lora-r8/adapter_model.safetensors",
);
const fixtureMissing = !existsSync(FIXTURE);
if (fixtureMissing) console.warn(`skipping the PEFT fixture tests: ${FIXTURE} is absent`);

describe("PEFT fixture (smollm2-360m-instruct-lora-r8)", () => {
  test.skipIf(fixtureMissing)("parses: 128 F32 tensors and metadata {format: pt}", () => {
    const file = readSafetensors(FIXTURE);
    expect(file.tensors.size).toBe(128);
    expect(file.metadata).toEqual({ format: "pt" });
    expect([...file.tensors.values()].every((t) => t.dtype === "F32")).toBe(true);
    expect(
      file.names.every((n) =>
        /^base_model\.model\.model\.layers\.\d+\.self_attn\.[qv]_proj\.lora_[AB]\.weight$/.test(n),
      ),
    ).toBe(true);
    expect(file.info("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").shape).toEqual([
      8, 960,
    ]);
    expect(file.dataStart % 8).toBe(0);
    const mapped = mmapSafetensors(FIXTURE);
    expect([...mapped.tensors.values()]).toEqual([...file.tensors.values()]);
  });

  test.skipIf(fixtureMissing)(
    "re-writing its tensors in offset order with its metadata reproduces the file byte for byte",
    () => {
      const file = readSafetensors(FIXTURE);
      const dir = freshDir();
      const out = join(dir, "adapter_model.safetensors");
      rewrite(file, out);
      const original = readFileSync(FIXTURE);
      const copy = readFileSync(out);
      expect(copy.length).toBe(original.length);
      expect(Buffer.compare(copy, original)).toBe(0);
    },
  );
});

// ---------------------------------------------------------------------------------------------------
// Strict validation

describe("strict validation", () => {
  const dir = freshDir();
  let n = 0;
  /** Writes `bytes` to a new file and expects readSafetensors to throw a MultiloraError naming it and `problem`. */
  function expectInvalid(bytes: Uint8Array, problem: string): void {
    const path = writeFile(dir, `case${n++}.safetensors`, bytes);
    expect(() => readSafetensors(path)).toThrow(about(path, problem));
    try {
      readSafetensors(path);
    } catch (e) {
      expect(e).toBeInstanceOf(MultiloraError);
      expect((e as MultiloraError).code).toBe("invalid_safetensors");
    }
  }
  const tensor = (name: string, dtype: string, shape: unknown, offsets: unknown): string =>
    `${JSON.stringify(name)}:${JSON.stringify({ dtype, shape, data_offsets: offsets })}`;

  test("refuses a file shorter than 8 bytes", () => {
    expectInvalid(
      new Uint8Array(0),
      "is 0 bytes long, too short for a safetensors file \\(8-byte header length\\)$",
    );
    expectInvalid(
      new Uint8Array(7),
      "is 7 bytes long, too short for a safetensors file \\(8-byte header length\\)$",
    );
  });

  test("refuses a header length of 0 or 1", () => {
    expectInvalid(
      buildBytes("", new Uint8Array(0), 0n),
      "header length 0 is outside 2\\.\\.100000000: not a safetensors file$",
    );
    expectInvalid(buildBytes("{", new Uint8Array(0), 1n), "header length 1 is outside 2\\.\\.100000000");
  });

  test("refuses a header length over 100,000,000", () => {
    expect(MAX_HEADER_BYTES).toBe(100_000_000);
    expectInvalid(
      buildBytes("{}", new Uint8Array(0), 100_000_001n),
      "header length 100000001 is outside 2\\.\\.100000000",
    );
    expectInvalid(
      buildBytes("{}", new Uint8Array(0), 2n ** 64n - 1n),
      "header length 18446744073709551615 is outside 2\\.\\.100000000",
    );
  });

  test("refuses a header length that runs past the end of the file", () => {
    expectInvalid(
      buildBytes("{}", new Uint8Array(0), 100n),
      "header length 100 runs past the end of the file \\(10 bytes\\): the file is truncated$",
    );
  });

  test("refuses a header that is not UTF-8", () => {
    expectInvalid(buildBytes(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), "header is not valid UTF-8$");
    expectInvalid(
      buildBytes(new Uint8Array([0x7b, 0x22, 0xc3, 0x22, 0x3a, 0x31, 0x7d])),
      "header is not valid UTF-8$",
    );
  });

  test("refuses a header that is not JSON", () => {
    expectInvalid(buildBytes("{not json}"), "header is not valid JSON \\(.+\\)$");
    expectInvalid(buildBytes('{"a":1'), "header is not valid JSON");
    expectInvalid(buildBytes("{}{}"), "header is not valid JSON");
  });

  test("refuses a header that does not start with '{', which covers JSON that is not an object", () => {
    for (const header of ["[]", "null", "42", '"text"', " {}", "\n{}", "x{}"]) {
      expectInvalid(buildBytes(header), "header does not start with '\\{': not a safetensors file$");
    }
  });

  test("refuses a header that starts with a UTF-8 byte order mark", () => {
    expectInvalid(
      buildBytes(new Uint8Array([0xef, 0xbb, 0xbf, 0x7b, 0x7d])),
      "header does not start with '\\{'",
    );
  });

  test("accepts a header padded with trailing spaces", () => {
    const header = `{${tensor("a", "U8", [2], [0, 2])}}      `;
    const path = writeFile(dir, "padded.safetensors", buildBytes(header, new Uint8Array([1, 2])));
    const file = readSafetensors(path);
    expect(file.dataStart).toBe(8 + header.length);
    expect(Array.from(file.view("a") as Uint8Array)).toEqual([1, 2]);
  });

  test("refuses a tensor entry that is not an object", () => {
    expectInvalid(buildBytes('{"a":5}'), 'tensor "a" is not an object$');
    expectInvalid(buildBytes('{"a":[1,2]}'), 'tensor "a" is not an object$');
    expectInvalid(buildBytes('{"a":null}'), 'tensor "a" is not an object$');
  });

  test("refuses an unknown dtype", () => {
    expectInvalid(
      buildBytes(`{${tensor("a", "F4", [1], [0, 1])}}`, new Uint8Array(1)),
      'tensor "a" has unsupported dtype "F4"$',
    );
    expectInvalid(
      buildBytes(`{${tensor("a", "f32", [1], [0, 4])}}`, new Uint8Array(4)),
      'tensor "a" has unsupported dtype "f32"$',
    );
    expectInvalid(
      buildBytes('{"a":{"shape":[1],"data_offsets":[0,1]}}', new Uint8Array(1)),
      'tensor "a" has unsupported dtype undefined$',
    );
    expectInvalid(
      buildBytes('{"a":{"dtype":4,"shape":[1],"data_offsets":[0,1]}}', new Uint8Array(1)),
      'tensor "a" has unsupported dtype 4$',
    );
    expectInvalid(
      buildBytes(`{${tensor("a", "toString", [1], [0, 1])}}`, new Uint8Array(1)),
      'tensor "a" has unsupported dtype "toString"$',
    );
  });

  test("refuses a bad shape: negative, non-integer, not an array", () => {
    expectInvalid(
      buildBytes(`{${tensor("a", "U8", [-1], [0, 0])}}`),
      'tensor "a" has an invalid shape \\[-1\\]$',
    );
    expectInvalid(
      buildBytes(`{${tensor("a", "U8", [1.5], [0, 1])}}`, new Uint8Array(1)),
      'tensor "a" has an invalid shape \\[1\\.5\\]$',
    );
    expectInvalid(
      buildBytes(`{${tensor("a", "U8", 3, [0, 3])}}`, new Uint8Array(3)),
      'tensor "a" has an invalid shape 3$',
    );
    expectInvalid(
      buildBytes(`{${tensor("a", "U8", ["3"], [0, 3])}}`, new Uint8Array(3)),
      'tensor "a" has an invalid shape \\["3"\\]$',
    );
    expectInvalid(
      buildBytes('{"a":{"dtype":"U8","data_offsets":[0,0]}}'),
      'tensor "a" has an invalid shape undefined$',
    );
  });

  test("refuses data_offsets of the wrong length or type, or that end before they begin", () => {
    expectInvalid(
      buildBytes(`{${tensor("a", "U8", [1], [0])}}`, new Uint8Array(1)),
      'tensor "a" has invalid data_offsets \\[0\\]$',
    );
    expectInvalid(
      buildBytes(`{${tensor("a", "U8", [1], [0, 1, 2])}}`, new Uint8Array(1)),
      'tensor "a" has invalid data_offsets \\[0,1,2\\]$',
    );
    expectInvalid(
      buildBytes(`{${tensor("a", "U8", [1], [-1, 0])}}`, new Uint8Array(1)),
      'tensor "a" has invalid data_offsets \\[-1,0\\]$',
    );
    expectInvalid(
      buildBytes(`{${tensor("a", "U8", [1], "0,1")}}`, new Uint8Array(1)),
      'tensor "a" has invalid data_offsets "0,1"$',
    );
    expectInvalid(
      buildBytes(`{${tensor("a", "U8", [0], [4, 0])}}`, new Uint8Array(4)),
      'tensor "a" has data_offsets \\[4, 0\\] that end before they begin$',
    );
  });

  test("refuses a shape x dtype size that differs from the data_offsets range", () => {
    expectInvalid(
      buildBytes(`{${tensor("a", "F32", [3], [0, 8])}}`, new Uint8Array(8)),
      'tensor "a" has shape \\[3\\] x F32 = 12 bytes but data_offsets \\[0, 8\\] span 8 bytes$',
    );
    expectInvalid(
      buildBytes(`{${tensor("s", "F64", [], [0, 4])}}`, new Uint8Array(4)),
      'tensor "s" has shape \\[\\] x F64 = 8 bytes but data_offsets \\[0, 4\\] span 4 bytes$',
    );
  });

  test("lists every broken tensor in one message", () => {
    expectInvalid(
      buildBytes(`{${tensor("a", "F4", [1], [0, 1])},${tensor("b", "U8", [-1], [1, 2])}}`, new Uint8Array(2)),
      'tensor "a" has unsupported dtype "F4"; tensor "b" has an invalid shape \\[-1\\]$',
    );
  });

  test("refuses a gap between tensors and a gap at the start of the data block", () => {
    expectInvalid(
      buildBytes(
        `{${tensor("a", "U8", [4], [0, 4])},${tensor("b", "U8", [4], [8, 12])}}`,
        new Uint8Array(12),
      ),
      'gap of 4 bytes in the data block before tensor "b"$',
    );
    expectInvalid(
      buildBytes(`{${tensor("a", "U8", [4], [2, 6])}}`, new Uint8Array(6)),
      'gap of 2 bytes in the data block before tensor "a"$',
    );
  });

  test("refuses overlapping tensors", () => {
    expectInvalid(
      buildBytes(
        `{${tensor("a", "F32", [2], [0, 8])},${tensor("b", "F32", [1], [4, 8])}}`,
        new Uint8Array(8),
      ),
      'tensor "b" overlaps the tensor before it$',
    );
    expectInvalid(
      buildBytes(`{${tensor("a", "U8", [4], [0, 4])},${tensor("b", "U8", [4], [0, 4])}}`, new Uint8Array(4)),
      'tensor "b" overlaps the tensor before it$',
    );
  });

  test("refuses trailing bytes after the last tensor", () => {
    expectInvalid(
      buildBytes(`{${tensor("a", "U8", [4], [0, 4])}}`, new Uint8Array(6)),
      "2 bytes after the last tensor belong to no tensor$",
    );
    expectInvalid(buildBytes("{}", new Uint8Array(3)), "3 bytes after the last tensor belong to no tensor$");
  });

  test("refuses a truncated file whose tensor data ends past the end of the file", () => {
    const header = `{${tensor("a", "F32", [2], [0, 8])}}`;
    const dataStart = 8 + header.length;
    expectInvalid(
      buildBytes(header, new Uint8Array(5)),
      `tensor data ends at byte ${dataStart + 8} but the file has ${dataStart + 5} bytes: the file is truncated$`,
    );
  });

  test("refuses __metadata__ that is not an object", () => {
    for (const value of ['"pt"', "[]", "null", "1"]) {
      expectInvalid(buildBytes(`{"__metadata__":${value}}`), "__metadata__ is not an object$");
    }
  });

  test("refuses __metadata__ with a value that is not a string", () => {
    expectInvalid(
      buildBytes('{"__metadata__":{"format":"pt","n":1}}'),
      '__metadata__ value of "n" is not a string$',
    );
    expectInvalid(
      buildBytes('{"__metadata__":{"o":{"a":"b"}}}'),
      '__metadata__ value of "o" is not a string$',
    );
    expectInvalid(buildBytes('{"__metadata__":{"z":null}}'), '__metadata__ value of "z" is not a string$');
  });

  test("accepts zero-size tensors anywhere in the data block", () => {
    const header = `{${tensor("e0", "F32", [0], [0, 0])},${tensor("a", "U8", [2], [0, 2])},${tensor("e1", "I64", [3, 0], [2, 2])},${tensor("e2", "F16", [0], [2, 2])}}`;
    const path = writeFile(dir, "zero-size.safetensors", buildBytes(header, new Uint8Array([5, 6])));
    const file = readSafetensors(path);
    expect(file.names).toEqual(["e0", "a", "e1", "e2"]);
    expect(file.view("e1").length).toBe(0);
    expect(file.view("e1")).toBeInstanceOf(BigInt64Array);
    expect(Array.from(file.view("a") as Uint8Array)).toEqual([5, 6]);
  });

  test("parseSafetensors names the given path in its errors", () => {
    expect(() => parseSafetensors(new Uint8Array(3), "some/where.safetensors")).toThrow(
      /^some\/where\.safetensors: is 3 bytes long/,
    );
  });
});

// ---------------------------------------------------------------------------------------------------
// Writer atomicity

describe("SafetensorsWriter atomicity", () => {
  const specs = [
    { name: "a", dtype: "F32" as const, shape: [2] },
    { name: "b", dtype: "U8" as const, shape: [3] },
  ];
  const data = new Uint8Array([0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0, 1, 2, 3]); // a = [1, -2], b = [1, 2, 3]

  test("the output does not exist until commit(), and only the finished file remains after it", () => {
    const dir = freshDir();
    const path = join(dir, "out.safetensors");
    const writer = SafetensorsWriter.create(path, specs, { format: "pt" });
    expect(writer.path).toBe(path);
    expect(writer.dataLength).toBe(11);
    expect(writer.fileLength).toBe(encodeHeader(specs, { format: "pt" }).length + 11);
    writer.write(data.subarray(0, 5));
    writer.write(data.subarray(5));
    expect(existsSync(path)).toBe(false);
    const during = readdirSync(dir);
    expect(during.length).toBe(1);
    expect(during[0]?.startsWith(".out.safetensors.tmp-")).toBe(true);
    writer.commit();
    expect(readdirSync(dir)).toEqual(["out.safetensors"]);
    const file = readSafetensors(path);
    expect(file.metadata).toEqual({ format: "pt" });
    expect(Array.from(file.view("a") as Float32Array)).toEqual([1, -2]);
    expect(Array.from(file.view("b") as Uint8Array)).toEqual([1, 2, 3]);
    expect(readFileSync(path).length).toBe(writer.fileLength);
  });

  test("chunked writes produce the same bytes as writeSafetensors", () => {
    const dir = freshDir();
    const chunked = join(dir, "chunked.safetensors");
    const whole = join(dir, "whole.safetensors");
    const writer = SafetensorsWriter.create(chunked, specs);
    for (let i = 0; i < data.length; i += 3) writer.write(data.subarray(i, i + 3));
    writer.commit();
    writeSafetensors(whole, [
      { ...specs[0], data: new Float32Array([1, -2]) } as TensorData,
      { ...specs[1], data: new Uint8Array([1, 2, 3]) } as TensorData,
    ]);
    expect(Buffer.compare(readFileSync(chunked), readFileSync(whole))).toBe(0);
  });

  test("abort() removes the temporary file, leaves the directory empty, and may be called twice", () => {
    const dir = freshDir();
    const path = join(dir, "out.safetensors");
    const writer = SafetensorsWriter.create(path, specs);
    writer.write(data.subarray(0, 4));
    expect(readdirSync(dir).length).toBe(1);
    writer.abort();
    expect(readdirSync(dir)).toEqual([]);
    writer.abort();
    expect(readdirSync(dir)).toEqual([]);
    expect(() => writer.write(data)).toThrow(about(path, "write after the file was closed$"));
  });

  test("writing more bytes than the header declares throws naming the path and leaves nothing", () => {
    const dir = freshDir();
    const path = join(dir, "out.safetensors");
    const writer = SafetensorsWriter.create(path, specs);
    writer.write(data.subarray(0, 8));
    expect(() => writer.write(new Uint8Array(4))).toThrow(
      about(path, "12 bytes of tensor data written, the header declares 11$"),
    );
    expect(readdirSync(dir)).toEqual([]);
    expect(() => writer.write(new Uint8Array(1))).toThrow(about(path, "write after the file was closed$"));
    expect(readdirSync(dir)).toEqual([]);
  });

  test("commit() with too few bytes throws naming the path and leaves nothing", () => {
    const dir = freshDir();
    const path = join(dir, "out.safetensors");
    const writer = SafetensorsWriter.create(path, specs);
    writer.write(data.subarray(0, 4));
    expect(() => writer.commit()).toThrow(about(path, "only 4 of 11 bytes of tensor data were written$"));
    expect(readdirSync(dir)).toEqual([]);
  });

  test("creating a writer in a directory that does not exist throws naming the output path", () => {
    const dir = freshDir();
    const path = join(dir, "no", "such", "dir", "out.safetensors");
    expect(() => SafetensorsWriter.create(path, specs)).toThrow(
      about(path, "the output directory .*no/such/dir does not exist$"),
    );
    expect(() => writeSafetensors(path, [])).toThrow(MultiloraError);
    expect(readdirSync(dir)).toEqual([]);
  });

  test("creating a writer under a regular file throws naming the output path", () => {
    const dir = freshDir();
    const blocker = writeFile(dir, "file", new Uint8Array([1]));
    const path = join(blocker, "out.safetensors");
    expect(() => SafetensorsWriter.create(path, specs)).toThrow(about(path, "is not inside a directory"));
    expect(readdirSync(dir)).toEqual(["file"]);
  });

  test("setMetadata with values of the same length rewrites the header", () => {
    const dir = freshDir();
    const path = join(dir, "out.safetensors");
    const writer = SafetensorsWriter.create(path, specs, { format: "pt", sha256: "0".repeat(64) });
    writer.write(data);
    const hash = "0123456789abcdef".repeat(4);
    writer.setMetadata({ format: "pt", sha256: hash });
    writer.commit();
    const file = readSafetensors(path);
    expect(file.metadata).toEqual({ format: "pt", sha256: hash });
    expect(Array.from(file.view("b") as Uint8Array)).toEqual([1, 2, 3]);
    expect(readFileSync(path).length).toBe(writer.fileLength);
  });

  test("setMetadata may be called before the data is written", () => {
    const dir = freshDir();
    const path = join(dir, "out.safetensors");
    const writer = SafetensorsWriter.create(path, specs, { k: "aaaa" });
    writer.setMetadata({ k: "bbbb" });
    writer.write(data);
    writer.commit();
    expect(readSafetensors(path).metadata).toEqual({ k: "bbbb" });
  });

  test("setMetadata that changes the padded header length throws naming the path and leaves nothing", () => {
    const dir = freshDir();
    const path = join(dir, "out.safetensors");
    const writer = SafetensorsWriter.create(path, specs, { sha256: "0".repeat(64) });
    writer.write(data);
    expect(() => writer.setMetadata({ sha256: "0".repeat(72) })).toThrow(
      about(path, "new metadata changes the header length$"),
    );
    expect(readdirSync(dir)).toEqual([]);
    expect(existsSync(path)).toBe(false);
    expect(() => writer.commit()).toThrow(MultiloraError);
    expect(readdirSync(dir)).toEqual([]);
  });

  test("an existing file at the output path is replaced only on commit", () => {
    const dir = freshDir();
    const path = join(dir, "out.safetensors");
    writeFileSync(path, "old content");
    const writer = SafetensorsWriter.create(path, specs);
    writer.write(data);
    expect(readFileSync(path, "utf8")).toBe("old content");
    writer.commit();
    expect(readdirSync(dir)).toEqual(["out.safetensors"]);
    expect(Array.from(readSafetensors(path).view("b") as Uint8Array)).toEqual([1, 2, 3]);
  });

  test("an aborted writer leaves an existing file at the output path untouched", () => {
    const dir = freshDir();
    const path = join(dir, "out.safetensors");
    writeFileSync(path, "old content");
    const writer = SafetensorsWriter.create(path, specs);
    writer.write(data.subarray(0, 2));
    expect(() => writer.commit()).toThrow(MultiloraError);
    expect(readFileSync(path, "utf8")).toBe("old content");
    expect(readdirSync(dir)).toEqual(["out.safetensors"]);
  });

  test("encodeHeader errors leave no temporary file behind", () => {
    const dir = freshDir();
    const path = join(dir, "out.safetensors");
    expect(() => SafetensorsWriter.create(path, [...specs, specs[0] as (typeof specs)[0]])).toThrow(
      /used twice/,
    );
    expect(readdirSync(dir)).toEqual([]);
  });

  test("two writers for the same output path can be open at once", () => {
    const dir = freshDir();
    const path = join(dir, "out.safetensors");
    const realNow = Date.now;
    Date.now = () => 1_700_000_000_000;
    let first: SafetensorsWriter | undefined;
    let second: SafetensorsWriter | undefined;
    try {
      first = SafetensorsWriter.create(path, specs);
      second = SafetensorsWriter.create(path, specs);
    } catch (e) {
      expect((e as Error).message).toBe("no error");
    } finally {
      Date.now = realNow;
      first?.abort();
      second?.abort();
    }
    expect(second).toBeDefined();
    expect(readdirSync(dir)).toEqual([]);
  });

  test("setMetadata after commit() throws and writes nothing anywhere", () => {
    const dir = freshDir();
    const path = join(dir, "out.safetensors");
    const writer = SafetensorsWriter.create(path, [], { k: "aaaa" });
    writer.commit();
    const victim = writeFile(dir, "victim.txt", new TextEncoder().encode("x".repeat(64)));
    const fd = openSync(victim, "r+"); // very likely reuses the writer's descriptor number
    let threw = false;
    try {
      writer.setMetadata({ k: "bbbb" });
    } catch {
      threw = true;
    } finally {
      closeSync(fd);
    }
    expect(readFileSync(victim, "utf8")).toBe("x".repeat(64));
    expect(threw).toBe(true);
    expect(readSafetensors(path).metadata).toEqual({ k: "aaaa" });
  });
});
