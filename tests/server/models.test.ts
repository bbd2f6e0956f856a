/**
 * GET /v1/models is answered from the last identical listing; every change shows at once: an adapter
 * used (cached), pinned, unloaded, a new file in the LoRA dir, a file removed.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { copyFileSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { post, startTestServer, type TestServer } from "../helpers/server.ts";

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer();
});
afterAll(async () => {
  await t?.close();
});

type Listing = { data: { id: string; lora?: { state: string; version?: string } }[] };
const models = async () => (await (await fetch(`${t.server.url}/v1/models`)).json()) as Listing;
const stateOf = (l: Listing, id: string) => l.data.find((m) => m.id === id)?.lora?.state;

test("every change to the adapters or the engine's cache shows in the next listing", async () => {
  const first = await models();
  expect(await models()).toEqual(first);
  expect(stateOf(first, "demo-all")).toBe("on_disk");

  const done = await post(`${t.server.url}/v1/completions`, {
    model: "demo-all",
    prompt: [1, 2],
    max_tokens: 2,
  });
  expect(done.status).toBe(200);
  const used = await models();
  expect(stateOf(used, "demo-all")).toBe("cached");
  expect(used.data.find((m) => m.id === "demo-all")?.lora?.version).toHaveLength(16);

  expect((await post(`${t.server.url}/v1/lora/adapters/demo-all/load`, { pin: true })).status).toBe(200);
  expect(stateOf(await models(), "demo-all")).toBe("pinned");

  expect((await post(`${t.server.url}/v1/lora/adapters/demo-all/unload`, {})).status).toBe(200);
  expect(stateOf(await models(), "demo-all")).toBe("on_disk");

  copyFileSync(join(t.loraDir, "demo-attention.safetensors"), join(t.loraDir, "fresh.safetensors"));
  expect(stateOf(await models(), "fresh")).toBe("on_disk");
  unlinkSync(join(t.loraDir, "fresh.safetensors"));
  expect((await models()).data.map((m) => m.id)).not.toContain("fresh");
});
