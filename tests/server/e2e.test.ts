/** The real server on a loopback port, driven by the official `openai` client. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import OpenAI from "openai";
import { collect } from "../helpers/engine.ts";
import { post, startTestServer, type TestServer } from "../helpers/server.ts";

const ROOT = join(import.meta.dir, "../..");
let t: TestServer;
beforeAll(async () => {
  t = await startTestServer();
});
afterAll(async () => {
  await t?.close();
});

// Extension fields go through the client as extra body fields.
const ext = <T>(params: T & Record<string, unknown>) => params as T;

async function engineGreedy(prompt: number[], maxNewTokens: number, taskName?: string): Promise<number[]> {
  const { core } = t.server.ctx;
  const adapter = taskName ? await core.registry?.get(taskName) : undefined;
  const lora = adapter ? await core.registry?.weights(adapter) : undefined;
  const handle = core.engine.enqueue({
    prompt,
    maxNewTokens,
    temperature: 0,
    endIds: core.tokenizer.eosTokenIds,
    lora,
  });
  const tokens: number[] = [];
  for await (const e of handle.events) tokens.push(e.token);
  return tokens.filter((x) => x >= 0);
}

describe("models", () => {
  test("lists the base model and every adapter as a model whose parent is the base", async () => {
    const list = await t.client.models.list();
    const ids = list.data.map((m) => m.id);
    expect(ids).toEqual(["model", "demo-all", "demo-attention"]);
    const adapter = list.data[1] as unknown as { parent: string; lora: { state: string } };
    expect(adapter.parent).toBe("model");
    expect(adapter.lora.state).toBe("on_disk");
    const one = await t.client.models.retrieve("llama");
    expect(one.id).toBe("llama");
    const missing = await t.client.models.retrieve("nope").then(
      () => "found",
      (e: Error) => e.message,
    );
    expect(missing).toContain('model "nope" does not exist');
  });
});

describe("chat completions", () => {
  const messages = [{ role: "user" as const, content: "Tell me about the sea." }];
  const rendered = () =>
    t.server.ctx.core.tokenizer.encode(
      t.server.ctx.core.chatTemplate.render(messages, { addGenerationPrompt: true }),
      {
        addSpecialTokens: false,
      },
    );

  test("greedy chat equals the engine's greedy tokens on the rendered prompt, with usage", async () => {
    const r = await t.client.chat.completions.create({
      model: "llama",
      messages,
      max_tokens: 12,
      temperature: 0,
    });
    const prompt = rendered();
    const expected = await engineGreedy(prompt, 12);
    expect(r.choices[0]?.message.content).toBe(
      t.server.ctx.core.tokenizer.decode(expected, { skipSpecialTokens: true }),
    );
    expect(r.usage).toEqual({
      prompt_tokens: prompt.length,
      completion_tokens: expected.length,
      total_tokens: prompt.length + expected.length,
    });
    expect(r.model).toBe("llama");
    expect(r.object).toBe("chat.completion");
  });

  test("an adapter named in model, or in lora_model, gives the adapter's output; the two differ from the base", async () => {
    const ask = (params: Record<string, unknown>) =>
      t.client.chat.completions.create(
        ext({ messages, max_tokens: 10, temperature: 0, logprobs: true, model: "llama", ...params }),
      );
    const viaModel = await ask({ model: "demo-all" });
    const viaField = await ask({ lora_model: "demo-all" });
    const base = await ask({});
    expect(viaModel.choices[0]?.message.content).toBe(viaField.choices[0]?.message.content as string);
    expect(viaModel.choices[0]?.logprobs).toEqual(viaField.choices[0]?.logprobs as never);
    // The random demo model may pick the same greedy tokens; the adapter shows in the probabilities.
    expect(viaModel.choices[0]?.logprobs?.content?.[0]?.logprob).not.toBe(
      base.choices[0]?.logprobs?.content?.[0]?.logprob as number,
    );
    const expected = await engineGreedy(rendered(), 10, "demo-all");
    expect(viaModel.choices[0]?.message.content).toBe(
      t.server.ctx.core.tokenizer.decode(expected, { skipSpecialTokens: true }),
    );
  });

  test("streaming sends the same text in chunks, a finish reason, usage when asked, then [DONE]", async () => {
    const whole = await t.client.chat.completions.create({
      model: "demo-attention",
      messages,
      max_tokens: 12,
      temperature: 0,
    });
    const stream = await t.client.chat.completions.create({
      model: "demo-attention",
      messages,
      max_tokens: 12,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish: string | null = null;
    let usage: unknown = null;
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(whole.choices[0]?.message.content as string);
    expect(finish).toBe(whole.choices[0]?.finish_reason as string);
    expect(usage).toEqual(whole.usage);
    expect(chunks).toBeGreaterThan(2);
  });

  test("logprobs: the chosen token's and the top ones, equal to the log-softmax of the engine's logits", async () => {
    const r = await t.client.chat.completions.create({
      model: "llama",
      messages,
      max_tokens: 4,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = r.choices[0]?.logprobs?.content ?? [];
    expect(content.length).toBe(4);
    const prompt = rendered();
    const engine = t.server.ctx.core.engine as unknown as {
      forwardLogits: (ids: number[]) => Float32Array[];
    };
    const row = engine.forwardLogits(prompt)[prompt.length - 1] as Float32Array;
    const max = Math.max(...row);
    const lse = max + Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
    const best = row.indexOf(max);
    expect(content[0]?.logprob).toBeCloseTo((row[best] as number) - lse, 4);
    expect(content[0]?.top_logprobs.length).toBe(3);
    expect(content[0]?.top_logprobs[0]?.logprob).toBeCloseTo(content[0]?.logprob as number, 6);
  });

  test("n choices use seed + i: each is reproducible and they differ", async () => {
    const ask = () =>
      t.client.chat.completions.create({
        model: "llama",
        messages,
        max_tokens: 8,
        temperature: 1.5,
        seed: 5,
        n: 3,
      });
    const [a, b] = await Promise.all([ask(), ask()]);
    expect(a.choices.map((c) => c.message.content)).toEqual(b.choices.map((c) => c.message.content));
    expect(new Set(a.choices.map((c) => c.message.content)).size).toBeGreaterThan(1);
  });
});

describe("completions", () => {
  test("token-id prompts with temperature 0 and return_token_ids return exactly what `multilora generate` returns", async () => {
    for (const adapter of [undefined, "demo-all"]) {
      const r = (await t.client.completions.create(
        ext({
          model: adapter ?? "llama",
          prompt: [5, 6, 7, 8],
          max_tokens: 8,
          temperature: 0,
          return_token_ids: true,
          logprobs: 0,
        }),
      )) as unknown as {
        choices: { token_ids: number[]; text: string; logprobs: { token_logprobs: number[] } }[];
      };
      const args = [
        "generate",
        "--model",
        t.modelDir,
        "--prompt-ids",
        "5,6,7,8",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "--json",
      ];
      if (adapter) args.push("--lora", join(t.loraDir, `${adapter}.safetensors`));
      const cli = spawnSync(process.execPath, [join(ROOT, "src/cli.ts"), ...args], { encoding: "utf8" });
      const generated = JSON.parse(cli.stdout) as { token_ids: number[]; logprobs: number[] };
      expect(r.choices[0]?.token_ids).toEqual(generated.token_ids);
      r.choices[0]?.logprobs.token_logprobs.forEach((lp, i) => {
        expect(lp).toBeCloseTo(generated.logprobs[i] as number, 5);
      });
    }
  });

  test("a list of prompts gives a choice each; text prompts get the tokenizer's BOS", async () => {
    const r = await t.client.completions.create({
      model: "llama",
      prompt: ["The sea", "The robot"],
      max_tokens: 4,
      temperature: 0,
    });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1]);
    const tok = t.server.ctx.core.tokenizer;
    expect(r.usage?.prompt_tokens).toBe(
      tok.encode("The sea", { addSpecialTokens: true }).length +
        tok.encode("The robot", { addSpecialTokens: true }).length,
    );
  });

  test("stop strings end the text before them, even across tokens", async () => {
    const full = await t.client.completions.create({
      model: "demo-all",
      prompt: [9, 10, 11],
      max_tokens: 16,
      temperature: 0,
    });
    const text = full.choices[0]?.text ?? "";
    expect(text.length).toBeGreaterThan(4);
    const stop = text.slice(2, 5);
    const cut = await t.client.completions.create({
      model: "demo-all",
      prompt: [9, 10, 11],
      max_tokens: 16,
      temperature: 0,
      stop: [stop],
    });
    expect(cut.choices[0]?.text).toBe(text.slice(0, text.indexOf(stop)));
    expect(cut.choices[0]?.finish_reason).toBe("stop");
  });
});

describe("errors, in OpenAI's shape with real status codes", () => {
  const url = () => `${t.server.url}/v1/chat/completions`;
  const messages = [{ role: "user", content: "x" }];

  test.each([
    ["an unknown model", { model: "gpt-7", messages }, 404, "model_not_found", "model"],
    [
      "an unknown adapter",
      { model: "llama", messages, lora_model: "nope" },
      404,
      "lora_not_found",
      "lora_model",
    ],
    [
      "a traversal in the adapter name",
      { model: "llama", messages, lora_model: "../model/lora/demo-all" },
      400,
      "invalid_lora_name",
      "lora_model",
    ],
    [
      "model and lora_model naming different adapters",
      { model: "demo-all", messages, lora_model: "demo-attention" },
      400,
      "conflicting_adapter",
      "lora_model",
    ],
    ["a wrong type", { model: "llama", messages, temperature: "hot" }, 400, "invalid_request", "temperature"],
    ["no messages", { model: "llama", messages: [] }, 400, "invalid_request", "messages"],
    [
      "max_tokens over the context",
      { model: "llama", messages, max_tokens: 100000 },
      400,
      "context_length_exceeded",
      "max_tokens",
    ],
  ])("%s", async (_what, body, status, code, param) => {
    const r = await post(url(), body);
    expect(r.status).toBe(status);
    expect(r.body.error).toMatchObject({ code, param });
    expect(typeof r.body.error.message).toBe("string");
    expect(r.body.error.type).toBe(status === 404 ? "not_found_error" : "invalid_request_error");
  });

  test("broken JSON is a 400 and an unknown route a 404, both in the error shape", async () => {
    const r = await fetch(url(), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{nope",
    });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe("invalid_json");
    const missing = await fetch(`${t.server.url}/v2/nothing`);
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { error: { code: string } }).error.code).toBe("route_not_found");
  });

  test("the openai client sees the status and code", async () => {
    const err = await t.client.chat.completions
      .create(ext({ model: "llama", messages: [{ role: "user", content: "x" }], lora_model: "nope" }))
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    expect((err as InstanceType<typeof OpenAI.NotFoundError>).code).toBe("lora_not_found");
  });
});

describe("health and lifecycle", () => {
  test("health routes answer; a client that disconnects mid-stream frees its engine slot", async () => {
    expect((await fetch(`${t.server.url}/health`)).status).toBe(200);
    expect(await (await fetch(`${t.server.url}/v1/health/ready`)).json()).toMatchObject({ status: "ready" });
    const controller = new AbortController();
    const response = await fetch(`${t.server.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "llama",
        prompt: [1, 2],
        max_tokens: 3000,
        temperature: 0,
        stream: true,
      }),
      signal: controller.signal,
    });
    const reader = response.body?.getReader();
    await reader?.read();
    controller.abort();
    const deadline = Date.now() + 5000;
    while (t.server.ctx.core.engine.stats().running > 0 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 10));
    expect(t.server.ctx.core.engine.stats().running).toBe(0);
  });

  test("collect helper sanity: the engine still serves after the cancel", async () => {
    const out = await collect(
      t.server.ctx.core.engine.enqueue({ prompt: [1, 2, 3], maxNewTokens: 3, temperature: 0 }),
    );
    expect(out.tokens.length).toBe(3);
  });
});
