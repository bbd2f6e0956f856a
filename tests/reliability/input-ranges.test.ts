/**
 * Numbers a client controls that must not wrap around on their way to the engine: prompt token ids
 * outside [0, vocab), seeds outside [0, 2^64), and MessagePack's 64-bit integers (Go, Java and some
 * Python encoders write small numbers as int64/uint64).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { DEMO_PRESETS } from "../../src/engine/demo-model.ts";
import { decodeMsgpack } from "../../src/server/wire.ts";
import { post, startTestServer, type TestServer } from "../helpers/server.ts";

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ "max-seq-len": 64 });
});
afterAll(async () => {
  await t?.close();
});

const VOCAB = DEMO_PRESETS.tiny.vocab;
const completion = (extra: Record<string, unknown>) => ({
  model: "demo-all",
  prompt: [1, 2, 3],
  max_tokens: 3,
  temperature: 0,
  ...extra,
});

test("a prompt token id at or past the vocabulary is a 400 that names it, never wrapped to another id", async () => {
  for (const bad of [4294967301, 2147483648, VOCAB, 2 ** 53]) {
    const r = await post(`${t.server.url}/v1/completions`, completion({ prompt: [1, bad, 3] }));
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe("invalid_token_id");
    expect(r.body.error.param).toBe("prompt");
    expect(String(r.body.error.message)).toContain(String(bad));
    expect(String(r.body.error.message)).toContain(String(VOCAB));
  }
  // In a batch of prompts too, and the last valid id still works.
  const batch = await post(`${t.server.url}/v1/completions`, completion({ prompt: [[1], [2, VOCAB + 7]] }));
  expect(batch.status).toBe(400);
  expect(String(batch.body.error.message)).toContain(String(VOCAB + 7));
  const edge = await post(`${t.server.url}/v1/completions`, completion({ prompt: [1, VOCAB - 1] }));
  expect(edge.status).toBe(200);
});

test("a seed outside [0, 2^64) is a 400 naming seed, not seed 0", async () => {
  for (const seed of [2 ** 64, 2 ** 70, -1]) {
    const r = await post(`${t.server.url}/v1/completions`, completion({ seed, temperature: 1 }));
    expect(r.status).toBe(400);
    expect(r.body.error.param).toBe("seed");
  }
  const ok = await post(`${t.server.url}/v1/completions`, completion({ seed: 2 ** 63, temperature: 1 }));
  expect(ok.status).toBe(200);
});

/** A MessagePack map of `fields`, each integer written as int64 (0xd3) or uint64 (0xcf) as `kinds` says. */
function msgpackWith64(fields: Record<string, string | bigint>, kind: "int64" | "uint64"): Uint8Array {
  const out: number[] = [0x80 | Object.keys(fields).length];
  const str = (s: string) => {
    const b = new TextEncoder().encode(s);
    out.push(0xa0 | b.length, ...b);
  };
  for (const [key, value] of Object.entries(fields)) {
    str(key);
    if (typeof value === "string") str(value);
    else {
      const bytes = new Uint8Array(8);
      const view = new DataView(bytes.buffer);
      if (kind === "int64") view.setBigInt64(0, value);
      else view.setBigUint64(0, value);
      out.push(kind === "int64" ? 0xd3 : 0xcf, ...bytes);
    }
  }
  return Uint8Array.from(out);
}

async function postMsgpack(bytes: Uint8Array) {
  const r = await fetch(`${t.server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/msgpack" },
    body: bytes,
  });
  const body = decodeMsgpack(new Uint8Array(await r.arrayBuffer())) as {
    usage: { completion_tokens: number };
    error: { code: string; message: string };
  };
  return { status: r.status, body };
}

test("MessagePack int64 and uint64 integers are accepted as numbers when they are safe", async () => {
  for (const kind of ["int64", "uint64"] as const) {
    const r = await postMsgpack(
      msgpackWith64({ model: "demo-all", prompt: "hi", max_tokens: 3n, temperature: 0n, seed: 7n }, kind),
    );
    expect(r.status).toBe(200);
    expect(r.body.usage.completion_tokens).toBe(3);
  }
});

test("a MessagePack integer too large to be a number exactly is a clear 400 naming its field", async () => {
  const r = await postMsgpack(
    msgpackWith64({ model: "demo-all", prompt: "hi", max_tokens: 2n ** 60n }, "uint64"),
  );
  expect(r.status).toBe(400);
  expect(r.body.error.code).toBe("invalid_msgpack");
  expect(r.body.error.message).toContain("max_tokens");
  expect(r.body.error.message).toContain(String(2n ** 60n));
});
