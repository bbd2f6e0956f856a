/**
 * A client that goes away stops its generation, streaming or not: a non-streaming request asking for
 * 4 x 4,000 tokens whose client closes the connection is cancelled in the engine (the tokens are not
 * generated) and recorded as cancelled (499), not 200.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { connect } from "node:net";
import { startTestServer, type TestServer } from "../helpers/server.ts";

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({ "max-seq-len": 4096, "max-batch": 4 });
});
afterAll(async () => {
  await t?.close();
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const generated = () => t.server.ctx.core.engine.stats().tokensGenerated;

/** Sends `body` as a raw HTTP request and closes the connection after `ms`. */
async function sendAndLeave(body: unknown, ms: number): Promise<void> {
  const { port } = new URL(t.server.url);
  const socket = connect(Number(port), "127.0.0.1");
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  const text = JSON.stringify(body);
  socket.write(
    `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\n\r\n${text}`,
  );
  await sleep(ms);
  socket.destroy();
}

async function metric(status: number): Promise<number> {
  const text = await (await fetch(`${t.server.url}/metrics`)).text();
  const line = text
    .split("\n")
    .find(
      (l) =>
        l.startsWith("multilora_requests_total{") &&
        l.includes('route="/v1/completions"') &&
        l.includes(`status="${status}"`),
    );
  return line ? Number(line.split(" ").pop()) : 0;
}

test("a non-streaming request whose client leaves is cancelled in the engine and logged as 499", async () => {
  const before = generated();
  await sendAndLeave({ model: "demo-all", prompt: "hi", max_tokens: 4000, n: 4, temperature: 1 }, 150);
  const atClose = generated() - before;
  expect(atClose).toBeGreaterThan(0); // it was running
  await sleep(300);
  const settled = generated() - before;
  await sleep(300);
  expect(generated() - before).toBe(settled); // nothing runs on
  expect(settled).toBeLessThan(16_000);
  expect(t.server.ctx.core.admission.size).toBe(0);
  expect(await metric(499)).toBe(1);
  expect(await metric(200)).toBe(0);
});

test("a client that leaves before its request reached the engine costs nothing either", async () => {
  const before = generated();
  await sendAndLeave({ model: "demo-all", prompt: "hi", max_tokens: 4000, n: 4, temperature: 1 }, 0);
  await sleep(400);
  const settled = generated() - before;
  await sleep(200);
  expect(generated() - before).toBe(settled);
  expect(settled).toBeLessThan(16_000);
  expect(t.server.ctx.core.admission.size).toBe(0);
});
