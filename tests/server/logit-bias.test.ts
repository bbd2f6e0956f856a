/**
 * logit_bias end to end: the real server on the demo model and the real `openai` client. A banned token
 * never comes, a forced one always does, with a JSON schema the output still validates; bad keys, too
 * many entries and ids outside the vocabulary are 400s naming the key; a backend that cannot apply it
 * answers a 400 saying so.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Ajv2020 from "ajv/dist/2020";
import * as v from "valibot";
import { ChatCompletionRequestSchema } from "../../src/api/schemas.ts";
import { DEMO_PRESETS, writeDemoModel } from "../../src/engine/demo-model.ts";
import { fakeApp } from "../helpers/fake-app.ts";
import { FakeEngine } from "../helpers/fake-engine.ts";
import { post, startTestServer, type TestServer } from "../helpers/server.ts";

let s: TestServer;
beforeAll(async () => {
  s = await startTestServer();
});
afterAll(async () => {
  await s.close();
});

const VOCAB = DEMO_PRESETS.tiny.vocab;
const ext = <T>(params: T & Record<string, unknown>) => params as T;
type WithIds = { choices: { token_ids: number[]; finish_reason: string; text: string }[] };

/** 10 seeds x n 4 x 25 tokens: 1,000 sampled tokens (or fewer where an end id came first). */
async function sample(logitBias?: Record<string, number>): Promise<number[][]> {
  const responses = await Promise.all(
    Array.from({ length: 10 }, (_, k) =>
      s.client.completions.create(
        ext({
          model: "model",
          prompt: [11, 12, 13, 14, 15],
          max_tokens: 25,
          n: 4,
          temperature: 1,
          seed: 500 + 10 * k,
          return_token_ids: true,
          ...(logitBias ? { logit_bias: logitBias } : {}),
        }),
      ),
    ),
  );
  return responses.flatMap((r) => (r as unknown as WithIds).choices.map((c) => c.token_ids));
}

function mostFrequent(tokens: number[]): number {
  const counts = new Map<number, number>();
  for (const t of tokens) counts.set(t, (counts.get(t) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0]?.[0] as number;
}

describe("logit_bias", () => {
  test("-100 bans a token over 1,000 sampled tokens (it appears without); +100 makes it every token", async () => {
    const free = (await sample()).flat();
    const banned = mostFrequent(free);
    expect(free.filter((t) => t === banned).length).toBeGreaterThan(10);
    const eos = s.server.ctx.core.tokenizer.eosTokenIds;
    // the end ids banned too, so every choice runs its 25 tokens
    const bans = Object.fromEntries([banned, ...eos].map((id) => [String(id), -100]));
    const biased = await sample(bans);
    expect(biased.flat().length).toBe(1000);
    expect(biased.flat().filter((t) => t === banned || eos.includes(t))).toEqual([]);
    const forced = await sample({ [String(banned)]: 100 });
    expect(forced.flat().length).toBe(1000);
    expect(new Set(forced.flat())).toEqual(new Set([banned]));
  }, 60_000);

  test("chat too, with a response_format json_schema: the output still validates, and a ban still holds", async () => {
    const schema = {
      type: "object",
      properties: { name: { type: "string", minLength: 1, maxLength: 8 }, ok: { type: "boolean" } },
      required: ["name", "ok"],
      additionalProperties: false,
    };
    const validate = new Ajv2020({ strict: false }).compile(schema);
    const { tokenizer } = s.server.ctx.core;
    // ban the tokens of "true" (so ok is false), push letters hard (allowed only inside the string)
    const trueIds = tokenizer.encode("true", { addSpecialTokens: false });
    const letters = tokenizer.encode("abcxyz", { addSpecialTokens: false });
    const logitBias = {
      ...Object.fromEntries(letters.map((id) => [String(id), 50])),
      ...Object.fromEntries(trueIds.slice(0, 1).map((id) => [String(id), -100])),
    };
    const ids: number[] = [];
    for (const seed of [1, 2, 3, 4, 5]) {
      const r = (await s.client.chat.completions.create(
        ext({
          model: "model",
          messages: [{ role: "user", content: "a name" }],
          response_format: { type: "json_schema", json_schema: { name: "n", schema, strict: true } },
          logit_bias: logitBias,
          n: 2,
          seed,
          temperature: 1,
          max_tokens: 200,
          return_token_ids: true,
        }),
      )) as unknown as {
        choices: { message: { content: string }; finish_reason: string; token_ids: number[] }[];
      };
      for (const c of r.choices) {
        expect(c.finish_reason).toBe("stop");
        const value = JSON.parse(c.message.content);
        if (!validate(value)) throw new Error(`${c.message.content} does not validate`);
        ids.push(...c.token_ids);
      }
    }
    expect(ids).not.toContain(trueIds[0] as number);
  }, 60_000);

  test("bad keys, more than 300 entries, ids outside the vocabulary: 400 invalid_request naming the key", async () => {
    const url = `${s.server.url}/v1/chat/completions`;
    const body = (logit_bias: unknown) => ({
      model: "model",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 2,
      logit_bias,
    });
    const cases: [unknown, string][] = [
      [{ abc: 1 }, 'logit_bias key "abc" is not a token id'],
      [{ "-1": 1 }, 'logit_bias key "-1" is not a token id'],
      [{ "1.5": 1 }, 'logit_bias key "1.5" is not a token id'],
      [{ "01": 1 }, 'logit_bias key "01" is not a token id'],
      [
        { [String(VOCAB)]: 1 },
        `logit_bias key "${VOCAB}" is not a token of this model: its token ids are 0 to ${VOCAB - 1}`,
      ],
      [{ "99999999999": -5 }, 'logit_bias key "99999999999" is not a token of this model'],
      [
        Object.fromEntries(Array.from({ length: 301 }, (_, i) => [String(i), 1])),
        "logit_bias has 301 entries; at most 300 are allowed",
      ],
    ];
    for (const [bias, message] of cases) {
      const r = await post(url, body(bias));
      expect({ bias, status: r.status, code: r.body.error.code, param: r.body.error.param }).toEqual({
        bias,
        status: 400,
        code: "invalid_request",
        param: "logit_bias",
      });
      expect(r.body.error.message as string).toContain(message);
    }
    // values outside [-100, 100] are the schema's 400
    for (const value of [101, -100.5, "5"]) {
      const r = await post(url, body({ "3": value }));
      expect({ value, status: r.status, code: r.body.error.code }).toEqual({
        value,
        status: 400,
        code: "invalid_request",
      });
    }
    // 300 entries, {} and null are fine, on completions too
    const ok = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [String(i), -1]));
    for (const bias of [ok, {}, null]) expect((await post(url, body(bias))).status).toBe(200);
    const completions = await post(`${s.server.url}/v1/completions`, {
      model: "model",
      prompt: "x",
      max_tokens: 2,
      logit_bias: { [String(VOCAB + 1)]: 3 },
    });
    expect([completions.status, completions.body.error.param]).toEqual([400, "logit_bias"]);
  });
});

test("on a backend that cannot apply logit_bias: a 400 unsupported_field saying so; nothing enqueued", async () => {
  const work = mkdtempSync(join(tmpdir(), "multilora-logit-bias-fake-"));
  try {
    const modelDir = writeDemoModel(join(work, "model")).dir;
    const body = {
      model: "demo",
      messages: [{ role: "user", content: "hi" }],
      logit_bias: { "7": -100, "300": 2.5 },
      n: 2,
    };
    const engine = new FakeEngine({ vocab: VOCAB, loraSlots: 1, logitBias: false });
    const response = await fakeApp(engine, modelDir).app.request(
      new Request("http://test/v1/chat/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      }),
    );
    expect(response.status).toBe(400);
    const { error } = (await response.json()) as { error: Record<string, unknown> };
    expect(error).toMatchObject({ code: "unsupported_field", param: "logit_bias" });
    expect(error.message).toContain("this backend cannot apply logit_bias");
    expect(engine.enqueued).toHaveLength(0);
    // where it can: every choice's engine request carries the bias as ids and values
    const capable = new FakeEngine({ vocab: VOCAB, loraSlots: 1, logitBias: true });
    const { core } = fakeApp(capable, modelDir);
    const task = core.chatTask(v.parse(ChatCompletionRequestSchema, body), { model: "demo" });
    expect(task.choices.map((c) => c.request.logitBias)).toEqual([
      { ids: Int32Array.of(7, 300), values: Float32Array.of(-100, 2.5) },
      { ids: Int32Array.of(7, 300), values: Float32Array.of(-100, 2.5) },
    ]);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
