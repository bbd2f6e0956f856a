/**
 * Adapter files read the one safe way (issue 12): the converted PEFT cache verified by its recorded hash,
 * stale temporaries removed, a link to /dev/zero named for what it is, `inspect` agreeing with load, and a
 * base_model_name_or_path other than the served model's a warning.
 */
import { afterAll, expect, test } from "bun:test";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEMO_PRESETS, writeDemoModel } from "../../src/engine/demo-model.ts";
import { confinedPath } from "../../src/lora/adapter-files.ts";
import { inspectAdapter } from "../../src/lora/inspect.ts";
import { readPeftAdapter } from "../../src/lora/peft-adapter.ts";
import { LoraRegistry } from "../../src/lora/registry.ts";
import { writePeftAdapter } from "../helpers/peft.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-adapter-files-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const { hidden, intermediate, layers, heads, kvHeads, headDim } = DEMO_PRESETS.tiny;
const dims = { hidden, intermediate, layers, heads, kvHeads, headDim };

function setup(name: string) {
  const demo = writeDemoModel(join(work, name));
  const cacheDir = join(work, `${name}-cache`);
  writePeftAdapter(join(demo.loraDir, "p"), { dims, dtype: "BF16" });
  const registry = () =>
    new LoraRegistry({
      dir: demo.loraDir,
      cacheDir,
      requirements: {
        dims,
        modelPath: join(demo.dir, "config.json"),
        dtype: "BF16",
        maxRank: 64,
        baseModelName: "multilora/demo",
      },
    });
  const converted = () =>
    readdirSync(join(cacheDir, "peft"))
      .filter((f) => f.endsWith(".safetensors"))
      .map((f) => join(cacheDir, "peft", f));
  return { demo, cacheDir, registry, converted };
}

test("a tampered cached conversion (same size) is converted again after a restart, never served", async () => {
  const s = setup("tampered");
  const first = await s.registry().get("p");
  const [file] = s.converted() as [string];
  const bytes = readFileSync(file);
  bytes[bytes.length - 20] = (bytes[bytes.length - 20] as number) ^ 0x40; // same size, other weights
  writeFileSync(file, bytes);
  const again = await s.registry().get("p");
  expect(again.sha256).toBe(first.sha256);
  expect(readFileSync(file)[bytes.length - 20]).not.toBe(bytes[bytes.length - 20]);
});

test("a truncated cached conversion is converted again, not a permanent 400", async () => {
  const s = setup("truncated");
  const first = await s.registry().get("p");
  const [file] = s.converted() as [string];
  truncateSync(file, 100);
  const again = await s.registry().get("p");
  expect(again.sha256).toBe(first.sha256);
});

test("temporaries left by a process killed while converting are removed at start; live ones stay", async () => {
  const s = setup("temporaries");
  await s.registry().get("p");
  const peft = join(s.cacheDir, "peft");
  const dead = join(peft, ".x.safetensors.tmp-999999999-0d0e");
  const live = join(peft, `.y.safetensors.tmp-${process.pid}-0d0e`);
  writeFileSync(dead, new Uint8Array(1000));
  writeFileSync(live, new Uint8Array(1000));
  s.registry();
  expect(existsSync(dead)).toBe(false);
  expect(existsSync(live)).toBe(true);
});

test("a base_model_name_or_path other than the served model's is a warning from validate()", async () => {
  const s = setup("base-name");
  writePeftAdapter(join(s.demo.loraDir, "smol"), {
    dims,
    dtype: "BF16",
    config: { base_model_name_or_path: "HuggingFaceTB/SmolLM2-360M" },
  });
  const r = s.registry();
  expect(await r.validate("smol")).toEqual({
    problems: [],
    warnings: [
      "the adapter was trained on HuggingFaceTB/SmolLM2-360M, but the served model is multilora/demo",
    ],
  });
  expect(await r.validate("demo-all")).toEqual({ problems: [], warnings: [] });
  // The listings (/v1/models, /v1/lora/adapters) carry the warning with the loaded version.
  expect(r.list().find((l) => l.name === "smol")?.version?.warnings).toEqual([
    "the adapter was trained on HuggingFaceTB/SmolLM2-360M, but the served model is multilora/demo",
  ]);
});

test("a link to /dev/zero as PEFT weights is named as a character device, not a directory", () => {
  const dir = join(work, "zero");
  writePeftAdapter(dir, { dims });
  rmSync(join(dir, "adapter_model.safetensors"));
  symlinkSync("/dev/zero", join(dir, "adapter_model.safetensors"));
  expect(() => readPeftAdapter(dir)).toThrow(
    /adapter_model\.safetensors: is not a regular file \(a character device\)/,
  );
  const report = inspectAdapter(dir);
  expect(report.valid).toBe(false);
  expect(report.problems.join("\n")).toMatch(/a character device/);
});

test("inspect and load agree on a truncated file and on other widths", async () => {
  const s = setup("agree");
  const src = readFileSync(join(s.demo.loraDir, "demo-attention.safetensors"));
  writeFileSync(join(s.demo.loraDir, "cut.safetensors"), src.subarray(0, src.length - 10));
  const loaded = await s.registry().validate("cut");
  const inspected = inspectAdapter(join(s.demo.loraDir, "cut.safetensors"));
  expect(loaded.problems).toHaveLength(1);
  expect(inspected.problems[0]).toContain("the file is truncated");
  expect(loaded.problems[0]).toContain("the file is truncated");
});

test("confinedPath follows links component by component and never out of the root", () => {
  const root = join(work, "root");
  mkdirSync(join(root, "a"), { recursive: true });
  writeFileSync(join(root, "a", "f"), "x");
  symlinkSync("a", join(root, "in"));
  symlinkSync(work, join(root, "out"));
  symlinkSync("out/root/a/f", join(root, "through-out"));
  symlinkSync("../root/a/f", join(root, "up-and-back"));
  expect(confinedPath(join(root, "in", "f"), root)).toBe(join(root, "a", "f"));
  expect(confinedPath(join(root, "out", "x"), root)).toBe("outside");
  expect(confinedPath(join(root, "through-out"), root)).toBe("outside");
  expect(confinedPath(join(root, "up-and-back"), root)).toBe("outside");
  expect(confinedPath(join(root, "missing"), root)).toBe("missing");
});
