/** The OpenAPI document: generated from the schemas, committed without drift, complete. */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { currentDocument, OPENAPI_PATH } from "../../scripts/openapi.ts";

type Doc = {
  openapi: string;
  paths: Record<
    string,
    Record<
      string,
      {
        operationId?: string;
        requestBody?: {
          content: Record<string, { schema: { properties: Record<string, unknown> }; example?: unknown }>;
        };
        responses: Record<string, unknown>;
      }
    >
  >;
};

test("openapi/openapi.json is what the schemas generate (run `npm run openapi` after changing them)", async () => {
  const committed = JSON.parse(readFileSync(OPENAPI_PATH, "utf8"));
  expect(committed).toEqual(JSON.parse(JSON.stringify(await currentDocument())));
});

test("every route is documented, with the extensions, examples and error responses", async () => {
  const doc = (await currentDocument()) as unknown as Doc;
  expect(doc.openapi).toBe("3.1.0");
  const operations = Object.values(doc.paths).flatMap((p) => Object.values(p).map((o) => o.operationId));
  expect(operations.sort()).toEqual(
    [
      "createChatCompletion",
      "createCompletion",
      "health",
      "listAdapters",
      "listModels",
      "liveness",
      "loadAdapter",
      "loadLoraAdapter",
      "readiness",
      "retrieveAdapter",
      "retrieveModel",
      "unloadAdapter",
      "unloadLoraAdapter",
      "validateAdapter",
    ].sort(),
  );
  const chat = doc.paths["/v1/chat/completions"]?.post;
  const fields = Object.keys(chat?.requestBody?.content["application/json"]?.schema.properties ?? {});
  for (const f of [
    "lora_model",
    "load_lora_weights",
    "lora_scale",
    "return_token_ids",
    "top_k",
    "min_p",
    "repetition_penalty",
    "messages",
    "stream_options",
    "top_logprobs",
  ]) {
    expect(fields).toContain(f);
  }
  expect(chat?.requestBody?.content["application/json"]?.example).toMatchObject({
    lora_model: "support-bot",
  });
  expect(Object.keys(chat?.responses ?? {}).sort()).toEqual([
    "200",
    "400",
    "401",
    "403",
    "404",
    "409",
    "413",
    "503",
  ]);
  expect(Object.keys(chat?.requestBody?.content ?? {}).sort()).toEqual([
    "application/json",
    "application/msgpack",
  ]);
});

test("openapi/client is what the document generates, and chats with an adapter end to end", async () => {
  const { CLIENT_PATH, generateClient } = await import("../../scripts/openapi-client.ts");
  const document = JSON.parse(readFileSync(OPENAPI_PATH, "utf8"));
  expect(readFileSync(CLIENT_PATH, "utf8")).toBe(generateClient(document));

  const { MultiloraClient, ApiError } = await import("../../openapi/client/index.ts");
  const { startTestServer } = await import("../helpers/server.ts");
  const t = await startTestServer();
  try {
    const client = new MultiloraClient({ baseUrl: t.server.url });
    const chat = await client.createChatCompletion({
      model: "llama",
      lora_model: "demo-all",
      messages: [{ role: "user", content: "Hello" }],
      max_tokens: 4,
      temperature: 0,
      return_token_ids: true,
    });
    expect(chat.object).toBe("chat.completion");
    expect(chat.choices[0]?.token_ids?.length).toBe(chat.usage.completion_tokens);
    const direct = await t.client.chat.completions.create({
      model: "demo-all",
      messages: [{ role: "user", content: "Hello" }],
      max_tokens: 4,
      temperature: 0,
    });
    expect(chat.choices[0]?.message.content).toBe(direct.choices[0]?.message.content as string);
    const models = await client.listModels();
    expect(models.data.map((m) => m.id)).toContain("demo-all");
    const adapter = await client.retrieveAdapter("demo-all");
    expect(adapter.state).toBe("cached");
    const err = await client.createCompletion({ model: "nope", prompt: [1] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as InstanceType<typeof ApiError>).status).toBe(404);
  } finally {
    await t.close();
  }
});

test("every field of every request body says what it means", async () => {
  const doc = (await currentDocument()) as unknown as Doc;
  const undocumented: string[] = [];
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const schema = op.requestBody?.content["application/json"]?.schema;
      for (const [field, spec] of Object.entries(schema?.properties ?? {})) {
        const description = (spec as { description?: string }).description;
        if (!description || description.length < 10) undocumented.push(`${method} ${path}: ${field}`);
      }
    }
  }
  expect(undocumented).toEqual([]);
});
