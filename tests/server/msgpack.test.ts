/** MessagePack on the wire: request bodies, responses, errors and streams, decodable by any MessagePack library. */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Unpackr } from "msgpackr";
import { encodeMsgpack } from "../../src/server/wire.ts";
import { startTestServer, type TestServer } from "../helpers/server.ts";

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer();
});
afterAll(async () => {
  await t?.close();
});

/** A strict, extension-free decoder: what a plain MessagePack client sees. */
const plain = new Unpackr({ useRecords: false, mapsAsObjects: true });
const decode = (bytes: Uint8Array) => plain.unpack(bytes) as Record<string, unknown>;
const body = { model: "demo-all", prompt: [1, 2, 3], max_tokens: 5, temperature: 0 };

test("a MessagePack request gets a MessagePack response equal to the JSON one", async () => {
  const viaJson = (await (
    await fetch(`${t.server.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    })
  ).json()) as {
    choices: { text: string }[];
    usage: unknown;
  };
  const r = await fetch(`${t.server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/msgpack" },
    body: encodeMsgpack(body),
  });
  expect(r.status).toBe(200);
  expect(r.headers.get("content-type")).toBe("application/msgpack");
  const out = decode(new Uint8Array(await r.arrayBuffer())) as {
    choices: { text: string }[];
    usage: unknown;
    object: string;
  };
  expect(out.object).toBe("text_completion");
  expect(out.choices[0]?.text).toBe(viaJson.choices[0]?.text as string);
  expect(out.usage).toEqual(viaJson.usage);
});

test("Accept: application/msgpack on a JSON request; errors come back as MessagePack too", async () => {
  const models = await fetch(`${t.server.url}/v1/models`, { headers: { accept: "application/msgpack" } });
  expect(models.headers.get("content-type")).toBe("application/msgpack");
  expect((decode(new Uint8Array(await models.arrayBuffer())).data as unknown[]).length).toBe(3);
  const bad = await fetch(`${t.server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/msgpack" },
    body: encodeMsgpack({ ...body, model: "nope" }),
  });
  expect(bad.status).toBe(404);
  expect(decode(new Uint8Array(await bad.arrayBuffer()))).toMatchObject({
    error: { code: "model_not_found", type: "not_found_error" },
  });
  const garbage = await fetch(`${t.server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/msgpack" },
    body: new Uint8Array([0xc1, 0xc1]),
  });
  expect(garbage.status).toBe(400);
  expect(decode(new Uint8Array(await garbage.arrayBuffer()))).toMatchObject({
    error: { code: "invalid_msgpack" },
  });
});

test("a stream is concatenated MessagePack records with the same text as the SSE stream", async () => {
  const r = await fetch(`${t.server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/msgpack" },
    body: encodeMsgpack({ ...body, max_tokens: 8, stream: true }),
  });
  expect(r.headers.get("content-type")).toBe("application/msgpack");
  const records = plain.unpackMultiple(new Uint8Array(await r.arrayBuffer())) as {
    choices: { text: string; finish_reason: string | null }[];
  }[];
  const text = records.map((rec) => rec.choices[0]?.text ?? "").join("");
  const sse = await fetch(`${t.server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...body, max_tokens: 8, stream: true }),
  });
  const sseText = (await sse.text())
    .split("\n\n")
    .filter((l) => l.startsWith("data: {"))
    .map((l) => (JSON.parse(l.slice(6)) as { choices: { text: string }[] }).choices[0]?.text ?? "")
    .join("");
  expect(text).toBe(sseText);
  expect(records.at(-1)?.choices[0]?.finish_reason).toBe("length");
});
