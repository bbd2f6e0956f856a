/** Every LoRA rule of the server (ARCHITECTURE.md sections 4 and 5), end to end on a loopback port. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, renameSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { writeDemoModel } from "../../src/engine/demo-model.ts";
import { post, startTestServer, type TestServer } from "../helpers/server.ts";

let t: TestServer;
let spare: string; // adapters of another demo seed: same shapes, other weights
beforeAll(async () => {
  // Two adapters fit at once; a full cache waits at most 1.5 s.
  t = await startTestServer({ "max-loras": 2, "queue-timeout": 1.5 });
  spare = join(t.work, "spare");
  writeDemoModel(spare, { seed: 99 });
});
afterAll(async () => {
  await t?.close();
});

const stats = () => t.server.ctx.core.engine.stats();
const url = (path: string) => `${t.server.url}${path}`;
/** First-token logprob and the text of a greedy completion: enough to tell weights apart. */
async function complete(body: Record<string, unknown>) {
  const r = await post(url("/v1/completions"), {
    model: "llama",
    prompt: [3, 4, 5],
    max_tokens: 4,
    temperature: 0,
    logprobs: 0,
    ...body,
  });
  const choice = (r.body as { choices?: { text: string; logprobs: { token_logprobs: number[] } }[] })
    .choices?.[0];
  return {
    status: r.status,
    error: r.body.error,
    text: choice?.text,
    logprob: choice?.logprobs.token_logprobs[0],
  };
}
function addAdapter(name: string, from: string): void {
  copyFileSync(join(spare, "lora", `${from}.safetensors`), join(t.loraDir, `${name}.safetensors`));
}
const state = async (name: string) =>
  ((await (await fetch(url(`/v1/lora/adapters/${name}`))).json()) as { state: string }).state;

describe("load_lora_weights", () => {
  test("auto loads on first use, then hits without sending weights", async () => {
    const before = stats();
    expect((await complete({ lora_model: "demo-attention" })).status).toBe(200);
    expect(stats().loraPuts).toBe(before.loraPuts + 1);
    expect(await state("demo-attention")).toBe("cached");
    expect((await complete({ lora_model: "demo-attention" })).status).toBe(200);
    expect(stats().loraPuts).toBe(before.loraPuts + 1);
    expect(stats().loraHits).toBe(before.loraHits + 1);
  });

  test("auto after eviction sends the weights again; never on an evicted adapter is a 409", async () => {
    addAdapter("third", "demo-attention");
    await complete({ lora_model: "demo-attention" });
    await complete({ lora_model: "demo-all" });
    await complete({ lora_model: "third" }); // evicts demo-attention, the least recently used
    expect(await state("demo-attention")).toBe("on_disk");
    const never = await complete({ lora_model: "demo-attention", load_lora_weights: "never" });
    expect(never.status).toBe(409);
    expect(never.error).toMatchObject({ code: "lora_not_cached", param: "load_lora_weights" });
    const puts = stats().loraPuts;
    expect((await complete({ lora_model: "demo-attention" })).status).toBe(200);
    expect(stats().loraPuts).toBe(puts + 1);
    expect((await complete({ lora_model: "demo-attention", load_lora_weights: "never" })).status).toBe(200);
  });

  test("always sends weights every time; a cached id is not overwritten", async () => {
    await complete({ lora_model: "demo-all" });
    const before = stats();
    const a = await complete({ lora_model: "demo-all", load_lora_weights: "always" });
    const b = await complete({ lora_model: "demo-all" });
    expect(a.logprob).toBe(b.logprob as number);
    expect(stats().loraPuts).toBe(before.loraPuts);
    expect(stats().loraHits).toBe(before.loraHits + 2);
  });
});

describe("names", () => {
  test.each([
    "../model/lora/demo-all",
    "/etc/passwd",
    "a/b",
    "a\u0000b",
    "..",
    "%2e%2e%2fdemo-all",
    "demo-all.safetensors/..",
    "",
  ])("%j is refused with a 400", async (name) => {
    const r = await complete({ lora_model: name });
    expect(r.status).toBe(400);
    expect(r.error).toMatchObject({ code: "invalid_lora_name", param: "lora_model" });
  });

  test("a link that leads outside the LoRA dir is refused", async () => {
    const outside = join(t.work, "outside");
    mkdirSync(outside, { recursive: true });
    copyFileSync(join(spare, "lora", "demo-all.safetensors"), join(outside, "x.safetensors"));
    symlinkSync(join(outside, "x.safetensors"), join(t.loraDir, "escape.safetensors"));
    const r = await complete({ lora_model: "escape" });
    expect(r.status).toBe(400);
    expect(r.error).toMatchObject({ code: "invalid_lora_name" });
  });
});

describe("files change while serving", () => {
  test("a new file is usable without a restart", async () => {
    addAdapter("fresh", "demo-all");
    const models = (await (await fetch(url("/v1/models"))).json()) as { data: { id: string }[] };
    expect(models.data.map((m) => m.id)).toContain("fresh");
    expect((await complete({ model: "fresh" })).status).toBe(200);
  });

  test("a file replaced in place, or by rename, serves the new weights under a new task id", async () => {
    addAdapter("hot", "demo-attention");
    const first = await complete({ lora_model: "hot" });
    const oldTask = t.server.ctx.core.registry?.loaded("hot")?.taskId;
    // In place: the same inode, new bytes.
    await Bun.write(
      join(t.loraDir, "hot.safetensors"),
      Bun.file(join(spare, "lora", "demo-all.safetensors")),
    );
    const inPlace = await complete({ lora_model: "hot" });
    const expected = await complete({ lora_model: "fresh" }); // fresh holds the same demo-all weights
    expect(inPlace.logprob).toBe(expected.logprob as number);
    expect(inPlace.logprob).not.toBe(first.logprob as number);
    const newTask = t.server.ctx.core.registry?.loaded("hot")?.taskId;
    expect(newTask).not.toBe(oldTask as bigint);
    // By rename: back to the first weights.
    copyFileSync(join(spare, "lora", "demo-attention.safetensors"), join(t.loraDir, ".hot.tmp"));
    renameSync(join(t.loraDir, ".hot.tmp"), join(t.loraDir, "hot.safetensors"));
    const renamed = await complete({ lora_model: "hot" });
    expect(renamed.logprob).toBe(first.logprob as number);
    // The same content gets its old id back: an id names one exact content.
    expect(t.server.ctx.core.registry?.loaded("hot")?.taskId).toBe(oldTask as bigint);
  });

  test("concurrent first requests for an adapter read and validate it once", async () => {
    addAdapter("crowd", "demo-attention");
    const loads = t.server.ctx.core.registry?.loads ?? 0;
    const results = await Promise.all(Array.from({ length: 5 }, () => complete({ lora_model: "crowd" })));
    expect(results.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    expect(new Set(results.map((r) => r.logprob)).size).toBe(1);
    expect((t.server.ctx.core.registry?.loads ?? 0) - loads).toBe(1);
  });
});

describe("scale", () => {
  test("lora_scale 0 equals the base model; lora_scale 1 equals no scale", async () => {
    const base = await complete({});
    const zero = await complete({ lora_model: "demo-all", lora_scale: 0 });
    const one = await complete({ lora_model: "demo-all", lora_scale: 1 });
    const plain = await complete({ lora_model: "demo-all" });
    expect(zero.logprob).toBe(base.logprob as number);
    expect(one.logprob).toBe(plain.logprob as number);
    expect(one.logprob).not.toBe(base.logprob as number);
  });
});

describe("admin routes", () => {
  test("load with pin, the pin cap (409), unload while a request runs", async () => {
    const pinned = await post(url("/v1/lora/adapters/demo-attention/load"), { pin: true });
    expect(pinned.status).toBe(200);
    expect(pinned.body).toMatchObject({ name: "demo-attention", state: "pinned" });
    // The pin cap (409) needs a tiny cache: tests/commands/serve.test.ts runs a server with one.
    const validate = await post(url("/v1/lora/adapters/demo-all/validate"), {});
    expect(validate.body).toMatchObject({ name: "demo-all", valid: true, problems: [] });

    // Unload waits for the running request, which finishes on its adapter.
    const long = post(url("/v1/completions"), {
      model: "demo-attention",
      prompt: [1],
      max_tokens: 200,
      temperature: 0,
    });
    await new Promise((r) => setTimeout(r, 20));
    const unload = await post(url("/v1/lora/adapters/demo-attention/unload"), {});
    expect(unload.status).toBe(200);
    const finished = await long;
    expect(finished.status).toBe(200);
    expect(
      (finished.body as unknown as { usage: { completion_tokens: number } }).usage.completion_tokens,
    ).toBe(200);
    expect(await state("demo-attention")).toBe("on_disk");
  });

  test("load takes no body at all (every field has a default); a body that is not JSON is still a 400", async () => {
    const bare = await fetch(url("/v1/lora/adapters/demo-all/load"), { method: "POST" });
    expect(bare.status).toBe(200);
    expect(await bare.json()).toMatchObject({ name: "demo-all", state: "cached" });
    const broken = await fetch(url("/v1/lora/adapters/demo-all/load"), { method: "POST", body: "{pin" });
    expect(broken.status).toBe(400);
    expect(((await broken.json()) as { error: { code: string } }).error.code).toBe("invalid_json");
  });

  test("the admin routes answer loopback clients only", async () => {
    const { createApp } = await import("../../src/server/app.ts");
    const app = createApp(t.server.ctx);
    const remote = await app.request("/v1/lora/adapters", {}, { remoteAddress: "10.1.2.3" });
    expect(remote.status).toBe(403);
    expect(((await remote.json()) as { error: { code: string } }).error.code).toBe("admin_loopback_only");
    const local = await app.request("/v1/lora/adapters", {}, { remoteAddress: "127.0.0.1" });
    expect(local.status).toBe(200);
  });
});

describe("a full cache is back-pressure", () => {
  test("a request waits for room while every cached adapter is in use, and gets a 503 past the queue timeout", async () => {
    // Fill both slots with running streams on two adapters.
    const streams = ["demo-attention", "demo-all"].map((model) => {
      const controller = new AbortController();
      const response = fetch(url("/v1/completions"), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model, prompt: [1], max_tokens: 3500, temperature: 0, stream: true }),
        signal: controller.signal,
      });
      return { controller, response };
    });
    for (const s of streams) await (await s.response).body?.getReader().read();
    expect(stats().tasks.filter((task) => task.active > 0).length).toBe(2);
    const refused = await complete({ lora_model: "fresh" });
    expect(refused.status).toBe(503);
    expect(refused.error).toMatchObject({ code: "lora_cache_full", type: "overloaded_error" });
    // The waiting request gets in as soon as one of them ends (its client goes away).
    const waiting = complete({ lora_model: "fresh" });
    await new Promise((r) => setTimeout(r, 100));
    streams[0]?.controller.abort();
    expect((await waiting).status).toBe(200);
    streams[1]?.controller.abort();
  }, 30_000);
});

describe("PEFT folders in the LoRA dir", () => {
  test("are converted on first use (once, cached by content) and serve what `multilora extract` produces", async () => {
    const { writePeftAdapter, ALL_SEVEN } = await import("../helpers/peft.ts");
    const { convertPeftAdapter } = await import("../../src/lora/convert.ts");
    const { readPeftAdapter } = await import("../../src/lora/peft-adapter.ts");
    const dims = { hidden: 64, intermediate: 192, layers: 4, heads: 4, kvHeads: 2, headDim: 16 };
    const peft = writePeftAdapter(join(t.loraDir, "peft-style"), {
      dims,
      modules: ALL_SEVEN,
      rank: 4,
      alpha: 32,
      seed: 12,
    });
    await convertPeftAdapter(readPeftAdapter(peft.dir), {
      output: join(t.loraDir, "peft-style-extracted.safetensors"),
      dtype: "BF16",
    });
    const viaPeft = await complete({ lora_model: "peft-style" });
    const viaFile = await complete({ lora_model: "peft-style-extracted" });
    expect(viaPeft.status).toBe(200);
    expect(viaPeft.logprob).toBe(viaFile.logprob as number);
    expect(viaPeft.text).toBe(viaFile.text as string);
    const listed = (await (await fetch(url("/v1/lora/adapters/peft-style"))).json()) as {
      format: string;
      state: string;
    };
    expect(listed).toMatchObject({ format: "peft" });
    // The converted file lives in the cache dir; a second registry finds it without converting again.
    const { readdirSync } = await import("node:fs");
    expect(readdirSync(join(t.work, "cache", "peft")).length).toBe(1);
  });

  test("a PEFT folder that does not fit the model is a 400 listing the problems", async () => {
    const { writePeftAdapter } = await import("../helpers/peft.ts");
    const wrong = { hidden: 32, intermediate: 64, layers: 4, heads: 4, kvHeads: 2, headDim: 8 };
    writePeftAdapter(join(t.loraDir, "misfit"), { dims: wrong, modules: ["q_proj"], rank: 2 });
    const r = await complete({ lora_model: "misfit" });
    expect(r.status).toBe(400);
    expect(String(r.error?.message)).toContain("attn_q (layers 0-3): rank 2 needs");
  });
});
