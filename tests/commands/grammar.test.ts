/** `multilora grammar check`, run as users run it: single schemas with instance files, and the batch mode. */
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pythonDumps } from "../../src/structured/python-json.ts";

const CLI = join(import.meta.dir, "../../src/cli.ts");
const work = mkdtempSync(join(tmpdir(), "multilora-grammar-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function run(args: string[], input?: string) {
  return spawnSync(process.execPath, [CLI, "grammar", "check", "--tokenizer", "demo", ...args], {
    encoding: "utf8",
    input,
  });
}

const SCHEMA = {
  type: "object",
  properties: { a: { type: "integer", maximum: 9 }, b: { type: "string" } },
  required: ["a"],
};

describe("multilora grammar check", () => {
  test("a schema and instances: compile time, accepted, or the token where the mask refused", () => {
    writeFileSync(join(work, "s.json"), JSON.stringify(SCHEMA));
    writeFileSync(join(work, "good.json"), '{"a": 3, "b": "x"}');
    writeFileSync(join(work, "bad.json"), '{"a": 12}');
    writeFileSync(join(work, "short.json"), '{"a": 3');
    const r = run([
      "--schema",
      join(work, "s.json"),
      "--instance",
      join(work, "good.json"),
      "--instance",
      join(work, "bad.json"),
      "--instance",
      join(work, "short.json"),
    ]);
    expect(r.status).toBe(1);
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^compiled in \d+\.\d\d ms$/);
    expect(lines[1]).toMatch(/good\.json: accepted \(\d+ tokens; mask p50 [\d.]+ µs, max [\d.]+ µs\)/);
    expect(lines[2]).toMatch(/bad\.json: rejected at token \d+ "/);
    expect(lines[3]).toMatch(/short\.json: rejected at token \d+ \(the end: the text is incomplete\)/);

    writeFileSync(join(work, "u.json"), JSON.stringify({ type: "array", uniqueItems: true }));
    const refused = run(["--schema", join(work, "u.json"), "--json"]);
    expect(refused.status).toBe(1);
    expect(JSON.parse(refused.stdout)).toMatchObject({
      compiled: false,
      error: expect.stringContaining("#/uniqueItems"),
    });
  });

  test("batch mode: one result line per input line, instances written as Python's json.dumps writes them", () => {
    const lines = [
      {
        id: "s1",
        schema: SCHEMA,
        tests: [
          { data: { a: 3 }, valid: true },
          { data: { a: 10 }, valid: false },
          { data: { b: "x" }, valid: false },
        ],
      },
      { id: 2, schema: { type: "number", multipleOf: 0.5 }, tests: [{ data: 1.0, valid: true }] },
      { id: "bad", schema: { not: {} }, tests: [{ data: 1, valid: false }] },
    ];
    // 1.0 stays a float in the line, as Python reads it, and is written back "1.0"
    const input = `${lines
      .map((l) => JSON.stringify(l))
      .join("\n")
      .replace('"data":1,', '"data":1.0,')}\n\nnot json\n`;
    const r = run(["--batch", "-", "--timeout-ms", "1000"], input);
    expect(r.status).toBe(0);
    const out = r.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(out).toHaveLength(4);
    expect(out[0]).toMatchObject({
      id: "s1",
      compiled: true,
      tests: [
        { accepted: true },
        { accepted: false, rejected_at: expect.any(Number) },
        { accepted: false, rejected_at: expect.any(Number) },
      ],
    });
    expect(out[0].compile_us).toBeGreaterThan(0);
    expect(out[0].mask_us.length).toBeGreaterThan(5);
    expect(out[1]).toMatchObject({ id: 2, compiled: true, tests: [{ accepted: true }] });
    expect(out[2]).toMatchObject({
      id: "bad",
      compiled: false,
      error: expect.stringContaining("#/not"),
      tests: [],
    });
    expect(out[3]).toMatchObject({ id: null, compiled: false, error: expect.stringContaining("line 5") });
  });

  test("usage errors say what is missing", () => {
    const r = spawnSync(process.execPath, [CLI, "grammar", "check", "--schema", "x.json"], {
      encoding: "utf8",
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("--tokenizer");
  });
});

test("Python's json.dumps: separators, floats' repr, integers as written, non-ASCII kept", () => {
  expect(
    pythonDumps(
      '{"a":1.0,"b":[1e-5,1e16,0.0001,123456789012345678901234,-0.0,2.5e+300],"c":"é\\n\\u0001\\"","d":{}}',
    ),
  ).toBe(
    '{"a": 1.0, "b": [1e-05, 1e+16, 0.0001, 123456789012345678901234, -0.0, 2.5e+300], "c": "é\\n\\u0001\\"", "d": {}}',
  );
  expect(pythonDumps("[1.5e-7, 12345.678, 1e15, 100.0, true, null]")).toBe(
    "[1.5e-07, 12345.678, 1000000000000000.0, 100.0, true, null]",
  );
});
