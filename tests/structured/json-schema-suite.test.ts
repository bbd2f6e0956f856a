/**
 * The JSON Schema Test Suite (draft 2020-12, ../shared/fixtures/json-schema-test-suite): every case whose
 * schema compiles must accept its valid instances and reject its invalid ones, token by token through the
 * C mask with the demo tokenizer and SmolLM2's; a case that does not compile names the keyword (a JSON
 * pointer), or allows no value at all (the schema false). An invalid instance
 * accepted fails at once; valid instances refused must be exactly the listed ones, each a documented place
 * where the grammar is stricter than the schema (docs/structured-output.md).
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { checkSchema, openVocabulary } from "../../src/commands/grammar.ts";
import { pythonDumps } from "../../src/structured/python-json.ts";
import { FIXTURES } from "../helpers/fixtures.ts";

const SUITE = join(FIXTURES, "json-schema-test-suite/tests/draft2020-12");
const SMOL = join(FIXTURES, "smollm2-360m-instruct-lora-r8");

interface Case {
  id: string;
  schema: unknown;
  tests: { description: string; text: string; valid: boolean }[];
}

/** format.json checks that format is only an annotation by default; the optional/format files check formats as assertions, which is what structured output enforces. */
const SUPPORTED_FORMATS = ["date-time", "date", "time", "uuid", "email", "ipv4", "ipv6", "hostname", "uri"];

function cases(): Case[] {
  const files = [
    ...readdirSync(SUITE)
      .filter((f) => f.endsWith(".json") && f !== "format.json")
      .map((f) => join(SUITE, f)),
    ...readdirSync(join(SUITE, "optional/format"))
      .filter((f) => SUPPORTED_FORMATS.includes(f.replace(/\.json$/, "")))
      .map((f) => join(SUITE, "optional/format", f)),
  ];
  return files.flatMap((file) => {
    const text = readFileSync(file, "utf8");
    const groups = JSON.parse(text) as {
      description: string;
      schema: unknown;
      tests: { description: string; data: unknown; valid: boolean }[];
    }[];
    return groups.map((g) => ({
      id: `${file.slice(SUITE.length + 1)}: ${g.description}`,
      schema: g.schema,
      // JSON.stringify then Python's dumps: the instance text a Python harness would feed.
      tests: g.tests.map((t) => ({
        description: t.description,
        text: pythonDumps(JSON.stringify(t.data)),
        valid: t.valid,
      })),
    }));
  });
}

/** Valid instances the grammar refuses, on purpose (each is a documented strictness). */
const STRICTER = new Set([
  // properties are generated in definition order (allOf: bar's schema comes first)
  "allOf.json: allOf | allOf",
  "allOf.json: allOf with base schema | valid",
  "const.json: const with object | same object with different property order is valid",
  // $ref to an $anchor whose resource also has $id: the number 5 is refused by a conservative merge
  "ref.json: order of evaluation: $id and $anchor and $ref | data is valid against first definition",
  // leap seconds (valid only at 23:59:60 UTC) and IPv6 literals are not generated
  "optional/format/date-time.json: validation of date-time strings | a valid date-time with a leap second, UTC",
  "optional/format/date-time.json: validation of date-time strings | a valid date-time with a leap second, with minus offset",
  "optional/format/time.json: validation of time strings | a valid time string with leap second, Zulu",
  "optional/format/time.json: validation of time strings | valid leap second, zero time-offset",
  "optional/format/time.json: validation of time strings | valid leap second, positive time-offset",
  "optional/format/time.json: validation of time strings | valid leap second, large positive time-offset",
  "optional/format/time.json: validation of time strings | valid leap second, negative time-offset",
  "optional/format/time.json: validation of time strings | valid leap second, large negative time-offset",
  "optional/format/email.json: validation of e-mail addresses | an IPv6-address-literal after the @ is valid",
  // quoted local parts are not generated
  "optional/format/email.json: validation of e-mail addresses | a quoted string with a space in the local part is valid",
  "optional/format/email.json: validation of e-mail addresses | a quoted string with a double dot in the local part is valid",
  "optional/format/email.json: validation of e-mail addresses | a quoted string with a @ in the local part is valid",
  "optional/format/uri.json: validation of URIs | a valid URL",
  // a metaschema without the validation vocabulary turns "minimum" off; the grammar still enforces it
  "vocabulary.json: schema that uses custom metaschema with with no validation vocabulary | no validation: invalid number, but it still validates",
]);

function isStricter(id: string, description: string, text: string): boolean {
  // host names: labels of at most 30 characters, no "--" in a label's third and fourth (IDNA A-labels)
  if (id.startsWith("optional/format/hostname.json") && /xn--|--|[^."]{31}/.test(text)) return true;
  return STRICTER.has(`${id} | ${description}`);
}

describe.skipIf(!existsSync(SUITE))("the JSON Schema Test Suite, draft 2020-12", () => {
  const all = existsSync(SUITE) ? cases() : [];

  for (const [name, where] of [
    ["the demo tokenizer", "demo"],
    ["SmolLM2's tokenizer", SMOL],
  ] as const) {
    test.skipIf(where !== "demo" && !existsSync(where))(
      `token by token through the C mask with ${name}`,
      () => {
        const { tokenizer, vocab } = openVocabulary(where);
        const counts = {
          cases: all.length,
          compiled: 0,
          notCompiled: 0,
          acceptedValid: 0,
          rejectedInvalid: 0,
          refusedValid: 0,
        };
        const wrong: string[] = [];
        try {
          for (const c of all) {
            const report = checkSchema(
              vocab,
              tokenizer,
              c.schema,
              c.tests.map((t) => t.text),
              5000,
            );
            if (!report.compiled) {
              expect(report.error).toMatch(/#[^:]*: |allows no value/);
              counts.notCompiled++;
              continue;
            }
            counts.compiled++;
            report.tests.forEach((r, i) => {
              const t = c.tests[i] as Case["tests"][number];
              if (r.accepted && !t.valid)
                wrong.push(`accepted invalid: ${c.id} | ${t.description}: ${t.text}`);
              else if (!r.accepted && t.valid) {
                counts.refusedValid++;
                if (!isStricter(c.id, t.description, t.text))
                  wrong.push(
                    `refused valid: ${c.id} | ${t.description}: ${t.text} (at token ${r.rejectedAt})`,
                  );
              } else if (r.accepted) counts.acceptedValid++;
              else counts.rejectedInvalid++;
            });
          }
        } finally {
          vocab.release();
        }
        console.log(`JSON Schema Test Suite (${name}): ${JSON.stringify(counts)}`);
        expect(wrong).toEqual([]);
        expect(counts.compiled).toBeGreaterThan(170);
      },
    );
  }
});
