/** JSON Schema to grammar: what each keyword lets through, read byte by byte with the reference reader. */
import { describe, expect, test } from "bun:test";
import { Budget } from "../../src/structured/budget.ts";
import { compileConstraint } from "../../src/structured/constraint.ts";
import { compileJsonSchema, MAX_WHITESPACE } from "../../src/structured/json-schema.ts";
import { pythonDumps } from "../../src/structured/python-json.ts";
import { ProgramMatcher } from "../helpers/program-matcher.ts";

function accepts(schema: unknown, text: string): boolean {
  const m = new ProgramMatcher(compileJsonSchema(schema, new Budget(5000)));
  return m.text(text) < 0 && m.complete;
}

function problems(schema: unknown): string {
  try {
    compileJsonSchema(schema, new Budget(5000));
  } catch (e) {
    return (e as Error).message;
  }
  return "compiled";
}

describe("objects", () => {
  const schema = {
    type: "object",
    properties: { a: { type: "integer" }, b: { type: "string" }, c: { type: "boolean" } },
    required: ["b"],
    additionalProperties: false,
  };
  test("properties in definition order, optional ones skipped, required ones never", () => {
    expect(accepts(schema, '{"b": "x"}')).toBe(true);
    expect(accepts(schema, '{"a": 1, "b": "x", "c": true}')).toBe(true);
    expect(accepts(schema, '{"a": 1, "c": true}')).toBe(false);
    expect(accepts(schema, '{"b": "x", "a": 1}')).toBe(false); // out of order: stricter than the schema
    expect(accepts(schema, '{"b": "x", "d": 1}')).toBe(false);
    expect(accepts(schema, "{}")).toBe(false);
  });
  test("additional properties: never a listed name, values per additionalProperties", () => {
    const open = { properties: { a: { type: "integer" } }, additionalProperties: { type: "string" } };
    expect(accepts(open, '{"a": 1, "x": "s", "y": "t"}')).toBe(true);
    expect(accepts(open, '{"x": 1}')).toBe(false);
    expect(accepts(open, '{"a": 1, "a": "s"}')).toBe(false); // a listed name as an extra
    expect(accepts(open, '{"ab": "s"}')).toBe(true);
    expect(accepts({ required: ["k"] }, '{"k": [1, {"z": null}]}')).toBe(true);
    expect(accepts({ required: ["k"] }, '{"j": 1}')).toBe(false);
  });
  test("whitespace as JSON allows it, in bounded runs", () => {
    expect(accepts(schema, '{ "b" :\n  "x" }')).toBe(true);
    expect(accepts(schema, `{${" ".repeat(MAX_WHITESPACE)}"b": "x"}`)).toBe(true);
    expect(accepts(schema, `{${" ".repeat(MAX_WHITESPACE + 1)}"b": "x"}`)).toBe(false);
    expect(accepts(schema, ' {"b": "x"}')).toBe(false); // nothing before the value
  });
});

describe("objects: patternProperties, propertyNames, property counts, not over types", () => {
  test("a key takes the schemas of the patterns that match it, else additionalProperties", () => {
    const schema = {
      properties: { id: { type: "integer" } },
      patternProperties: { "^x-": { type: "string" }, num$: { type: "number" } },
      additionalProperties: false,
    };
    expect(accepts(schema, '{"id": 1, "x-a": "s", "bnum": 2}')).toBe(true);
    expect(accepts(schema, '{"x-a": 1}')).toBe(false);
    expect(accepts(schema, '{"x-num": 1}')).toBe(false); // both patterns: a string and a number at once
    expect(accepts(schema, '{"other": 1}')).toBe(false);
    // a listed property must also satisfy the patterns that match its name
    expect(
      accepts(
        { properties: { "x-y": { type: "string" } }, patternProperties: { "^x-": { maxLength: 1 } } },
        '{"x-y": "ab"}',
      ),
    ).toBe(false);
  });
  test("propertyNames limits every key; minProperties and maxProperties count them", () => {
    const names = { propertyNames: { pattern: "^[a-z]+$", maxLength: 3 } };
    expect(['{"ab": 1}', '{"Ab": 1}', '{"abcd": 1}', "{}"].map((t) => accepts(names, t))).toEqual([
      true,
      false,
      false,
      true,
    ]);
    const counted = {
      type: "object",
      properties: { a: {}, b: {} },
      additionalProperties: { type: "integer" },
      minProperties: 2,
      maxProperties: 3,
    };
    expect(
      [
        '{"a": 1}',
        '{"a": 1, "b": 2}',
        '{"a": 1, "z": 2}',
        '{"a": 1, "b": 2, "c": 3}',
        '{"a": 1, "b": 2, "c": 3, "d": 4}',
      ].map((t) => accepts(counted, t)),
    ).toEqual([false, true, true, true, false]);
    expect(["{}", '{"q": 1}', '{"q": 1, "r": 2}'].map((t) => accepts({ minProperties: 1 }, t))).toEqual([
      false,
      true,
      true,
    ]);
  });
  test("not over types", () => {
    expect(["null", "1", '"s"'].map((t) => accepts({ not: { type: "null" } }, t))).toEqual([
      false,
      true,
      true,
    ]);
    expect(problems({ not: { const: 1 } })).toContain("#/not: not is supported only as");
  });
});

describe("strings", () => {
  test("lengths count characters (code points), escapes have one spelling", () => {
    const s = { type: "string", minLength: 2, maxLength: 3 };
    expect(accepts(s, '"ab"')).toBe(true);
    expect(accepts(s, '"😀é"')).toBe(true);
    expect(accepts(s, '"a"')).toBe(false);
    expect(accepts(s, '"abcd"')).toBe(false);
    expect(accepts(s, '"a\\nb"')).toBe(true);
    expect(accepts(s, '"a\\u000ab"')).toBe(true);
    expect(accepts(s, '"\\u0061b"')).toBe(false); // a printable character is never escaped
    expect(accepts({ enum: ["ab"] }, '"\\u0061b"')).toBe(false);
  });
  test("pattern searches (unanchored) and formats are enforced together", () => {
    expect(accepts({ type: "string", pattern: "b+" }, '"abbc"')).toBe(true);
    expect(accepts({ type: "string", pattern: "^b+$" }, '"abbc"')).toBe(false);
    const day = { type: "string", format: "date", pattern: "-02-" };
    expect(accepts(day, '"2024-02-29"')).toBe(true);
    expect(accepts(day, '"2023-02-29"')).toBe(false);
    expect(accepts(day, '"2024-03-01"')).toBe(false);
  });
});

describe("composition and references", () => {
  test("anyOf, allOf merging, oneOf when its alternatives cannot overlap", () => {
    const any = {
      anyOf: [
        { type: "integer", maximum: 3 },
        { type: "string", maxLength: 1 },
      ],
    };
    expect(["2", '"x"', "4", '"xy"'].map((t) => accepts(any, t))).toEqual([true, true, false, false]);
    const all = { allOf: [{ type: "integer", minimum: 2 }, { maximum: 4 }, { multipleOf: 2 }] };
    expect(["2", "4", "3", "6", "0"].map((t) => accepts(all, t))).toEqual([true, true, false, false, false]);
    const tagged = {
      oneOf: [
        { type: "object", properties: { kind: { const: "a" }, x: { type: "integer" } }, required: ["kind"] },
        { type: "object", properties: { kind: { const: "b" } }, required: ["kind"] },
      ],
    };
    expect(accepts(tagged, '{"kind": "a", "x": 1}')).toBe(true);
    expect(problems({ oneOf: [{ type: "integer" }, { minimum: 2 }] })).toContain(
      "#/oneOf: oneOf alternatives 0 and 1 may both match",
    );
  });
  test("recursive $ref, $defs, definitions, $anchor, and $id-relative references", () => {
    const list = {
      $defs: {
        node: { type: "object", properties: { next: { $ref: "#/$defs/node" } }, additionalProperties: false },
      },
      $ref: "#/$defs/node",
    };
    expect(accepts(list, '{"next": {"next": {}}}')).toBe(true);
    expect(accepts(list, '{"next": {"nxt": {}}}')).toBe(false);
    expect(accepts({ definitions: { a: { $anchor: "A", type: "null" } }, $ref: "#A" }, "null")).toBe(true);
    expect(problems({ $ref: "https://example.com/other.json" })).toContain(
      "remote references are not fetched",
    );
    expect(problems({ allOf: [{ $ref: "#" }] })).toContain("$ref cycle");
  });
  test("draft-07: siblings of $ref are ignored; draft-04: exclusiveMaximum is a flag; items as an array", () => {
    const d7 = {
      $schema: "http://json-schema.org/draft-07/schema#",
      definitions: { s: { type: "string" } },
      $ref: "#/definitions/s",
      maxLength: 1,
    };
    expect(accepts(d7, '"long"')).toBe(true);
    expect(accepts({ ...d7, $schema: "https://json-schema.org/draft/2020-12/schema" }, '"long"')).toBe(false);
    const d4 = {
      $schema: "http://json-schema.org/draft-04/schema#",
      type: "number",
      maximum: 3,
      exclusiveMaximum: true,
    };
    expect(["2.9", "3"].map((t) => accepts(d4, t))).toEqual([true, false]);
    const tuple = { type: "array", items: [{ type: "integer" }, { type: "string" }], additionalItems: false };
    expect(['[1, "a"]', "[1]", '[1, "a", 2]', '["a"]'].map((t) => accepts(tuple, t))).toEqual([
      true,
      true,
      false,
      false,
    ]);
  });
  test("enum and const: only the values the sibling keywords allow, JSON's equality for numbers", () => {
    const e = { type: "string", enum: ["a", "bb", 3], maxLength: 1 };
    expect(['"a"', '"bb"', "3"].map((t) => accepts(e, t))).toEqual([true, false, false]);
    expect(["1", "1.0", "1.5"].map((t) => accepts({ const: 1 }, t))).toEqual([true, true, false]);
    expect(accepts({ const: { a: [1, null] } }, pythonDumps('{"a":[1,null]}'))).toBe(true);
  });
});

describe("what is refused", () => {
  test("every keyword that cannot be enforced, with its JSON pointer, in one message", () => {
    const message = problems({
      type: "object",
      properties: { tags: { type: "array", uniqueItems: true, contains: { const: 1 } }, n: { not: {} } },
      patternProperties: { "^\\p{L}": {} },
      if: { required: ["n"] },
      // biome-ignore lint/suspicious/noThenProperty: JSON Schema's keyword
      then: { required: ["tags"] },
      format: "idn-hostname",
      maxProperties: 100,
    });
    for (const where of [
      "#/properties/tags/uniqueItems",
      "#/properties/tags/contains",
      "#/properties/n/not",
      "#/patternProperties/^\\p{L}: pattern: Unicode property escapes",
      "#/if",
      '#/format: format "idn-hostname" is not enforced',
      "#/maxProperties: maxProperties above 32",
    ]) {
      expect(message).toContain(where);
    }
  });
  test("unknown keywords and annotations change nothing", () => {
    expect(
      accepts({ type: "integer", title: "n", examples: [1], "x-vendor": true, nullable: true }, "5"),
    ).toBe(true);
    expect(accepts({ type: "integer", nullable: true }, "null")).toBe(false); // OpenAPI's nullable is not JSON Schema
  });
  test("a schema that allows nothing is refused; regex and choice constraints", () => {
    expect(problems(false)).toContain("allows no value");
    expect(problems({ type: "integer", minimum: 3, maximum: 2 })).toContain("allows no value");
    const re = new ProgramMatcher(compileConstraint({ kind: "regex", pattern: "[a-c]{2}\\d" }, 1000));
    expect(re.text("ab7")).toBe(-1);
    expect(re.complete).toBe(true);
    const choice = new ProgramMatcher(compileConstraint({ kind: "choice", choices: ["yes", "no"] }, 1000));
    expect(choice.text("ye")).toBe(-1);
    expect(choice.complete).toBe(false);
    expect(choice.text("x")).toBe(0);
  });
});
