/**
 * At least 2,000 generated malformed requests against the real server: never a 5xx, every error in
 * OpenAI's shape, unknown fields ignored, and the server still healthy afterwards.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { rng } from "../../src/engine/random-checkpoint.ts";
import { startTestServer, type TestServer } from "../helpers/server.ts";

let t: TestServer;
beforeAll(async () => {
  // A short context keeps the requests that happen to be valid cheap.
  t = await startTestServer({ "max-seq-len": 64, "max-body-mb": 0.05 });
});
afterAll(async () => {
  await t?.close();
});

type Body = string | Uint8Array;
interface Case {
  what: string;
  method: string;
  path: string;
  body?: Body;
  contentType?: string;
}

const ADAPTER_NAMES = [
  "../model/lora/demo-all",
  "..",
  "../../../../etc/passwd",
  "/etc/passwd",
  "/tmp",
  "demo-all/../demo-all",
  "demo-all\u0000",
  "\u0000",
  "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
  "..%2fdemo-all",
  "demo-all%00",
  "./demo-all",
  "demo-all/",
  "~root",
  "C:\\Windows\\system32",
  "a".repeat(5000),
  "demo-all.safetensors",
  "demo\u202eall",
  "demo-all ",
  " ",
  "",
  "...",
  ".hidden",
  "con",
  "demo-all\n",
];

const BAD_VALUES: unknown[] = [
  null,
  true,
  -1,
  0,
  1.5,
  1e308,
  -1e308,
  2 ** 63,
  "",
  "x",
  "\u0000",
  [],
  [1, 2],
  {},
  { a: 1 },
  "9".repeat(400),
  Array(300).fill("stop"),
];

const FIELDS = [
  "model",
  "messages",
  "prompt",
  "max_tokens",
  "max_completion_tokens",
  "temperature",
  "top_p",
  "n",
  "stop",
  "seed",
  "presence_penalty",
  "frequency_penalty",
  "stream",
  "stream_options",
  "logprobs",
  "top_logprobs",
  "lora_model",
  "load_lora_weights",
  "lora_scale",
  "top_k",
  "min_p",
  "repetition_penalty",
  "return_token_ids",
  "echo",
  "user",
];

function validChat(): Record<string, unknown> {
  return { model: "llama", messages: [{ role: "user", content: "hi" }], max_tokens: 2 };
}
function validCompletion(): Record<string, unknown> {
  return { model: "llama", prompt: [1, 2, 3], max_tokens: 2 };
}

/** Deterministic cases: every field with every bad value, names, bodies, routes. */
function generateCases(): Case[] {
  const random = rng(2026);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)] as T;
  const cases: Case[] = [];
  const json = (path: string, body: unknown, what: string) =>
    cases.push({ what, method: "POST", path, body: JSON.stringify(body), contentType: "application/json" });

  for (const path of ["/v1/chat/completions", "/v1/completions"]) {
    const valid = path === "/v1/completions" ? validCompletion : validChat;
    for (const field of FIELDS) {
      for (const value of BAD_VALUES)
        json(path, { ...valid(), [field]: value }, `${path} ${field}=${JSON.stringify(value)?.slice(0, 40)}`);
    }
    for (const name of ADAPTER_NAMES) {
      json(path, { ...valid(), lora_model: name }, `${path} lora_model=${JSON.stringify(name).slice(0, 40)}`);
      json(path, { ...valid(), model: name }, `${path} model=${JSON.stringify(name).slice(0, 40)}`);
    }
    // Unknown fields are ignored.
    json(
      path,
      { ...valid(), surprise: { deep: [1, 2, 3] }, tools: "x", logit_bias: { 5: 100 } },
      `${path} unknown fields`,
    );
    // Broken bodies.
    const text = JSON.stringify(valid());
    for (let cut = 0; cut < text.length; cut += 3) {
      cases.push({
        what: `${path} truncated at ${cut}`,
        method: "POST",
        path,
        body: text.slice(0, cut),
        contentType: "application/json",
      });
    }
    for (const body of [
      "[]",
      "1",
      '"x"',
      "null",
      "{",
      "}",
      "{}",
      "{{}}",
      "[".repeat(5000),
      `{"model":${"[".repeat(3000)}`,
    ]) {
      cases.push({
        what: `${path} body ${body.slice(0, 12)}`,
        method: "POST",
        path,
        body,
        contentType: "application/json",
      });
    }
    cases.push({
      what: `${path} invalid UTF-8`,
      method: "POST",
      path,
      body: new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]),
      contentType: "application/json",
    });
    cases.push({
      what: `${path} giant body`,
      method: "POST",
      path,
      body: JSON.stringify({ ...valid(), pad: "x".repeat(200_000) }),
      contentType: "application/json",
    });
    cases.push({
      what: `${path} empty body`,
      method: "POST",
      path,
      body: "",
      contentType: "application/json",
    });
    cases.push({ what: `${path} wrong method`, method: "GET", path });
    // Random mutations of valid requests: several fields at once.
    for (let i = 0; i < 450; i++) {
      const body = valid();
      for (let k = 0; k < 1 + Math.floor(random() * 4); k++) body[pick(FIELDS)] = pick(BAD_VALUES);
      if (random() < 0.3) body.lora_model = pick(ADAPTER_NAMES);
      json(path, body, `${path} mutation ${i}`);
    }
  }
  // Messages and prompts of the wrong shape.
  for (const messages of [
    [{ role: "robot", content: "x" }],
    [{ role: "user", content: 5 }],
    [{ content: "x" }],
    [{ role: "user", content: [{ type: "image", url: "x" }] }],
    ["hi"],
    [null],
  ]) {
    json(
      "/v1/chat/completions",
      { ...validChat(), messages },
      `messages ${JSON.stringify(messages).slice(0, 40)}`,
    );
  }
  for (const prompt of [
    [],
    [[]],
    [-1],
    [1e10],
    [1.5],
    ["a", 1],
    [[1], "a"],
    [[1, -2]],
    [1e300],
    { text: "x" },
  ]) {
    json(
      "/v1/completions",
      { ...validCompletion(), prompt },
      `prompt ${JSON.stringify(prompt).slice(0, 40)}`,
    );
  }
  // Admin routes with odd names and bodies, and unknown routes.
  for (const name of ADAPTER_NAMES.slice(0, 15)) {
    const encoded = encodeURIComponent(name);
    for (const action of ["load", "unload", "validate"]) {
      cases.push({
        what: `admin ${action} ${encoded.slice(0, 30)}`,
        method: "POST",
        path: `/v1/lora/adapters/${encoded}/${action}`,
        body: "{}",
        contentType: "application/json",
      });
    }
    cases.push({
      what: `admin get ${encoded.slice(0, 30)}`,
      method: "GET",
      path: `/v1/lora/adapters/${encoded}`,
    });
    cases.push({ what: `model get ${encoded.slice(0, 30)}`, method: "GET", path: `/v1/models/${encoded}` });
  }
  for (const path of [
    "/",
    "/v1",
    "/v2/chat/completions",
    "/v1/chat/completions/x",
    "/%00",
    "/..%2f..%2fetc%2fpasswd",
    "/v1/lora/adapters/demo-all/pin",
  ]) {
    cases.push({ what: `route ${path}`, method: "POST", path, body: "{}", contentType: "application/json" });
  }
  return cases;
}

test("2,000+ malformed requests: no 5xx, errors in OpenAI's shape, the server still healthy", async () => {
  const cases = generateCases();
  expect(cases.length).toBeGreaterThanOrEqual(2000);
  const failures: string[] = [];
  const statuses = new Map<number, number>();
  for (const c of cases) {
    const response = await fetch(`${t.server.url}${c.path}`, {
      method: c.method,
      headers: c.contentType ? { "content-type": c.contentType } : {},
      body: c.body,
    });
    statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
    const text = await response.text();
    if (response.status >= 500) failures.push(`${c.what}: ${response.status} ${text.slice(0, 200)}`);
    if (response.status >= 400) {
      let error: unknown;
      try {
        error = (JSON.parse(text) as { error?: unknown }).error;
      } catch {}
      const e = error as { message?: unknown; type?: unknown; code?: unknown } | undefined;
      if (!e || typeof e.message !== "string" || typeof e.type !== "string" || !("code" in e)) {
        failures.push(`${c.what}: ${response.status} not in OpenAI's error shape: ${text.slice(0, 120)}`);
      }
    }
  }
  if (process.env.MULTILORA_VERBOSE) console.log(cases.length, [...statuses].sort());
  expect(failures).toEqual([]);
  expect((statuses.get(400) ?? 0) + (statuses.get(404) ?? 0)).toBeGreaterThan(cases.length / 2);
  // Still healthy, and still serving.
  expect((await fetch(`${t.server.url}/v1/health/ready`)).status).toBe(200);
  const ok = await t.client.chat.completions.create({
    model: "demo-all",
    messages: [{ role: "user", content: "hi" }],
    max_tokens: 3,
  });
  expect(ok.choices[0]?.finish_reason).toBeDefined();
  expect(t.server.ctx.core.engine.stats().running).toBe(0);
}, 120_000);
