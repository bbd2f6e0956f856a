/**
 * Structured output end to end: the real server on the demo model, the real `openai` client, and every
 * finished output checked by a validator of its own (ajv, draft 2020-12, with formats). The demo model's
 * weights are random, so whatever it prefers, only the constraint makes its output valid.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Ajv2020 from "ajv/dist/2020";
import addFormats from "ajv-formats";
import { compileConstraint } from "../../src/structured/constraint.ts";
import { ProgramMatcher } from "../helpers/program-matcher.ts";
import { post, startTestServer, type TestServer } from "../helpers/server.ts";

let s: TestServer;
beforeAll(async () => {
  s = await startTestServer({ "constraint-compile-timeout": 1 });
});
afterAll(async () => {
  await s.close();
});

const ajv = new Ajv2020({ strict: false });
addFormats(ajv);

/** Schemas whose every value is short (bounded strings and arrays, no free keys): each generation ends. */
type Schema = Record<string, unknown>;
const SCHEMAS: Record<string, Schema> = {
  person: {
    type: "object",
    properties: {
      name: { type: "string", minLength: 1, maxLength: 6 },
      age: { type: "integer", minimum: 0, maximum: 150 },
      email: { type: "string", format: "email", maxLength: 16 },
      tags: { type: "array", items: { enum: ["red", "green", "blue"] }, maxItems: 3 },
    },
    required: ["name", "age"],
    additionalProperties: false,
  },
  measurements: {
    type: "array",
    items: { type: "number", minimum: -1.5, exclusiveMaximum: 10, multipleOf: 0.25 },
    minItems: 1,
    maxItems: 4,
  },
  union: {
    anyOf: [
      { type: "boolean" },
      { type: "null" },
      { type: "string", pattern: "^[a-z]{2,5}$" },
      { const: { ok: true } },
    ],
  },
  event: {
    $defs: { when: { type: "string", format: "date-time" } },
    type: "object",
    properties: {
      id: { type: "string", format: "uuid" },
      at: { $ref: "#/$defs/when" },
      level: { enum: [1, 2, 3] },
    },
    required: ["id", "at", "level"],
    additionalProperties: false,
  },
  tree: {
    $defs: {
      node: {
        type: "object",
        properties: {
          v: { type: "integer", minimum: 0, maximum: 9 },
          kids: { type: "array", items: { $ref: "#/$defs/node" }, maxItems: 1 },
        },
        required: ["v"],
        additionalProperties: false,
      },
    },
    $ref: "#/$defs/node",
  },
};

const format = (schema: Schema) => ({
  type: "json_schema" as const,
  json_schema: { name: "out", schema, strict: true },
});

function expectValid(text: string | null | undefined, schema: Schema): void {
  const value = JSON.parse(text ?? "");
  const validate = ajv.compile(schema);
  if (!validate(value)) throw new Error(`${text} is not valid: ${ajv.errorsText(validate.errors)}`);
}

describe("response_format json_schema", () => {
  test("200 sampled generations over five schemas and many seeds all finish, parse and validate", async () => {
    const runs = Object.entries(SCHEMAS).flatMap(([name, schema]) =>
      Array.from({ length: 10 }, (_, k) => ({ name, schema, seed: 1000 * k + name.length })),
    );
    const responses = await Promise.all(
      runs.map((r) =>
        s.client.chat.completions.create({
          model: "model",
          messages: [{ role: "user", content: `Give me a ${r.name}` }],
          response_format: format(r.schema),
          n: 4,
          seed: r.seed,
          temperature: 1,
          max_tokens: 1500,
        }),
      ),
    );
    let checked = 0;
    responses.forEach((response, i) => {
      for (const choice of response.choices) {
        const run = runs[i] as { name: string };
        expect({ schema: run.name, finish: choice.finish_reason }).toEqual({
          schema: run.name,
          finish: "stop",
        });
        expectValid(choice.message.content, (runs[i] as { schema: Schema }).schema);
        checked++;
      }
    });
    expect(checked).toBe(200);
  }, 60_000);

  test("streamed: the chunks join into a valid value; completions and n > 1 too", async () => {
    const schema = SCHEMAS.person as Schema;
    const stream = await s.client.chat.completions.create({
      model: "demo-attention",
      messages: [{ role: "user", content: "hi" }],
      response_format: format(schema),
      stream: true,
      seed: 7,
      max_tokens: 1500,
    });
    let text = "";
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe("stop");
    expectValid(text, schema);

    const completion = await s.client.completions.create({
      model: "demo-all",
      prompt: "JSON:",
      n: 3,
      seed: 3,
      temperature: 2,
      max_tokens: 1500,
      // @ts-expect-error: response_format is an extension on completions (vLLM has it too)
      response_format: format(SCHEMAS.person as Schema),
    });
    expect(completion.choices).toHaveLength(3);
    for (const c of completion.choices) expectValid(c.text, SCHEMAS.person as Schema);
    // n choices differ (seed + i), each valid
    expect(new Set(completion.choices.map((c) => c.text)).size).toBeGreaterThan(1);
  }, 30_000);

  test("constrained and free requests on different adapters share batches; the free ones' tokens are unchanged", async () => {
    const free = (model: string) =>
      s.client.completions.create({ model, prompt: "Once upon", max_tokens: 24, seed: 11, temperature: 1 });
    const alone = await Promise.all([free("model"), free("demo-attention")]);
    const mixed = await Promise.all([
      free("model"),
      free("demo-attention"),
      ...["model", "demo-attention", "demo-all"].map((model) =>
        s.client.chat.completions.create({
          model,
          messages: [{ role: "user", content: "x" }],
          response_format: format(SCHEMAS.event as Schema),
          seed: 5,
          max_tokens: 1500,
        }),
      ),
    ]);
    expect(mixed[0]?.choices[0]).toMatchObject({ text: alone[0]?.choices[0]?.text });
    expect(mixed[1]?.choices[0]).toMatchObject({ text: alone[1]?.choices[0]?.text });
    for (const r of mixed.slice(2)) {
      const choice = (r as { choices: { message: { content: string | null } }[] }).choices[0];
      expectValid(choice?.message.content, SCHEMAS.event as Schema);
    }
  }, 30_000);
});

describe("the other ways to ask", () => {
  test("json_object, structured_outputs (json, regex, choice) and vLLM's older guided_* fields", async () => {
    const chat = (extra: Record<string, unknown>) =>
      post(`${s.server.url}/v1/chat/completions`, {
        model: "model",
        messages: [{ role: "user", content: "x" }],
        max_tokens: 1500,
        seed: 2,
        ...extra,
      });
    const content = (r: Awaited<ReturnType<typeof chat>>) => {
      expect(r.status).toBe(200);
      const choices = r.body.choices as { message: { content: string }; finish_reason: string }[];
      expect(choices[0]?.finish_reason).toBe("stop");
      return choices[0]?.message.content as string;
    };
    // Any JSON object: the random model may go on past max_tokens, and then its text is a valid start of one.
    const any = await chat({ response_format: { type: "json_object" }, max_tokens: 300 });
    const choice = (any.body.choices as { message: { content: string }; finish_reason: string }[])[0];
    if (choice?.finish_reason === "stop") expect(JSON.parse(choice.message.content)).toBeObject();
    else {
      const reader = new ProgramMatcher(compileConstraint({ kind: "json_object" }, 1000));
      expect(reader.text(choice?.message.content ?? "")).toBe(-1);
      expect(choice?.message.content.startsWith("{")).toBe(true);
    }
    expect(content(await chat({ structured_outputs: { regex: "[0-9]{3}-[a-z]{2}" } }))).toMatch(
      /^[0-9]{3}-[a-z]{2}$/,
    );
    expect(["yes", "no", "maybe"]).toContain(
      content(await chat({ structured_outputs: { choice: ["yes", "no", "maybe"] } })),
    );
    expect(["left", "right"]).toContain(content(await chat({ guided_choice: ["left", "right"] })));
    expectValid(
      content(await chat({ structured_outputs: { json: JSON.stringify(SCHEMAS.union) } })),
      SCHEMAS.union as Schema,
    );
    expectValid(content(await chat({ guided_json: SCHEMAS.tree })), SCHEMAS.tree as Schema);
  }, 30_000);

  test("what cannot be enforced is a 400 naming every keyword, never a silent free-text answer", async () => {
    const r = await post(`${s.server.url}/v1/chat/completions`, {
      model: "model",
      messages: [{ role: "user", content: "x" }],
      response_format: format({
        type: "object",
        properties: { a: { type: "array", uniqueItems: true }, b: { not: { const: 1 } } },
        patternProperties: { "^\\p{L}": {} },
      }),
    });
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe("unsupported_schema");
    expect(r.body.error.param).toBe("response_format");
    for (const where of ["#/properties/a/uniqueItems", "#/properties/b/not", "#/patternProperties/^\\p{L}"]) {
      expect(r.body.error.message as string).toContain(where);
    }
    const cases: [Record<string, unknown>, string, string][] = [
      [{ structured_outputs: { grammar: "root ::= x" } }, "unsupported_field", "structured_outputs.grammar"],
      [{ structured_outputs: { regex: "(?=a)b" } }, "unsupported_schema", "structured_outputs.regex"],
      [{ response_format: { type: "json_object" }, guided_regex: "a" }, "invalid_request", "guided_regex"],
      [{ response_format: { type: "json_object" }, stop: ["}"] }, "invalid_request", "stop"],
      [
        { response_format: format({ type: "integer", minimum: 5, maximum: 1 }) },
        "invalid_schema",
        "response_format",
      ],
    ];
    for (const [extra, code, param] of cases) {
      const bad = await post(`${s.server.url}/v1/chat/completions`, {
        model: "model",
        messages: [{ role: "user", content: "x" }],
        ...extra,
      });
      expect([bad.status, bad.body.error.code, bad.body.error.param]).toEqual([400, code, param]);
    }
  });

  test("a schema too costly to compile is a 400 at the time limit, and the server answers meanwhile", async () => {
    const t = performance.now();
    const slow = post(`${s.server.url}/v1/chat/completions`, {
      model: "model",
      messages: [{ role: "user", content: "x" }],
      // a DFA of 2^17 states: past the 1 s limit (or the state limit) on any machine
      response_format: format({ type: "string", pattern: "^(a|b)*a(a|b){16}$" }),
    });
    const t0 = performance.now();
    const models = await fetch(`${s.server.url}/v1/models`);
    expect(models.status).toBe(200);
    expect(performance.now() - t0).toBeLessThan(400); // not behind the compilation
    const r = await slow;
    expect([r.status, r.body.error.code]).toEqual([400, "constraint_too_complex"]);
    expect(performance.now() - t).toBeLessThan(2500);
    // and a normal constrained request right after works
    const ok = await s.client.chat.completions.create({
      model: "model",
      messages: [{ role: "user", content: "x" }],
      response_format: format(SCHEMAS.union as Schema),
      max_tokens: 200,
    });
    expectValid(ok.choices[0]?.message.content, SCHEMAS.union as Schema);
  });
});
