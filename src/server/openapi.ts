/**
 * The OpenAPI 3.1 document, generated from the routes' valibot schemas (hono-openapi with
 * @valibot/to-json-schema): every route, field, extension, error response and an example per request.
 * `openapi/openapi.json` is this document, committed; a test fails when they drift (`npm run openapi`).
 */
import type { Handler, Hono } from "hono";
import { type DescribeRouteOptions, generateSpecs, resolver, uniqueSymbol } from "hono-openapi";
import type { GenericSchema } from "valibot";
import {
  AdapterListSchema,
  AdapterSchema,
  ChatCompletionChunkSchema,
  ChatCompletionRequestSchema,
  ChatCompletionResponseSchema,
  CompletionRequestSchema,
  CompletionResponseSchema,
  ErrorResponseSchema,
  HealthSchema,
  LoadAdapterRequestSchema,
  LoadLoraAdapterRequestSchema,
  ModelListSchema,
  ModelSchema,
  UnloadLoraAdapterRequestSchema,
  ValidationResultSchema,
} from "../api/schemas.ts";
import { VERSION } from "../version.ts";
import type { AppEnv } from "./context.ts";

/** A body in JSON, or the same in MessagePack. */
function body(schema: GenericSchema, example?: unknown) {
  return {
    "application/json": { schema: resolver(schema), ...(example === undefined ? {} : { example }) },
    "application/msgpack": { schema: resolver(schema) },
  };
}

const ERRORS: Record<number, string> = {
  400: "The request is not valid (a field, the adapter, the context length); the message lists every problem",
  401: "No API key, or a wrong one",
  403: "The key may not use this adapter, or the route answers loopback clients only",
  404: "Unknown model, adapter or route",
  409: "load_lora_weights is never and the adapter is not in the engine's cache; or a pin over the cap",
  413: "The body is larger than --max-body-mb",
  501: "This backend cannot do it",
  503: "Overloaded: the adapter cache stayed full past --queue-timeout, --max-queue, or shutting down (Retry-After)",
};

function errors(...codes: number[]) {
  return Object.fromEntries(
    codes.map((c) => [c, { description: ERRORS[c] as string, content: body(ErrorResponseSchema) }]),
  );
}

const GENERATION_ERRORS = errors(400, 401, 403, 404, 409, 413, 503);

const LORA_EXTENSIONS = `
multilora extensions: \`lora_model\` names an adapter of the LoRA dir (an adapter may also be named in \`model\`);
\`load_lora_weights\` is \`auto\` (send the adapter's weights only when the engine may not have them), \`always\` or
\`never\` (a miss is a 409 \`lora_not_cached\`); \`lora_scale\` multiplies the adapter's contribution (0 = the base model);
\`top_k\`, \`min_p\`, \`repetition_penalty\`; \`return_token_ids\` adds the token ids. Structured output
(\`response_format\`, vLLM's \`structured_outputs\` and \`guided_json\` / \`guided_regex\` / \`guided_choice\`) and \`tools\`
are enforced token by token; a schema keyword that cannot be enforced is a 400 \`unsupported_schema\` naming each.
Unknown fields are ignored, but fields of OpenAI's and vLLM's APIs that would change the output and are not implemented
here (\`min_tokens\`, \`ignore_eos\`, \`guided_grammar\`, ...) are a 400 \`unsupported_field\` naming each.
With \`stream: true\` the response is server-sent events of chunks ending with \`data: [DONE]\` (or concatenated
MessagePack records); the status is sent after the first token, so adapter errors are real 4xx.`;

/** A route's description, on its handler: hono-openapi finds it there, and no middleware runs per request for it. */
function describe(spec: DescribeRouteOptions): DescribeRouteOptions {
  return spec;
}

export function documented<P extends string>(
  spec: DescribeRouteOptions,
  handler: Handler<AppEnv, P>,
): Handler<AppEnv, P> {
  return Object.assign(handler, { [uniqueSymbol]: { spec } });
}

export const routeDocs = {
  chat: describe({
    operationId: "createChatCompletion",
    summary: "Create a chat completion",
    description: `OpenAI's chat completions, with an adapter per request.${LORA_EXTENSIONS}`,
    tags: ["Completions"],
    requestBody: {
      required: true,
      content: body(ChatCompletionRequestSchema, {
        model: "llama",
        lora_model: "support-bot",
        messages: [{ role: "user", content: "How do I reset my password?" }],
        max_tokens: 128,
        temperature: 0.7,
      }),
    },
    responses: {
      200: {
        description: "The completion, or with stream: true its chunks",
        content: {
          ...body(ChatCompletionResponseSchema),
          "text/event-stream": { schema: resolver(ChatCompletionChunkSchema) },
        },
      },
      ...GENERATION_ERRORS,
    },
  }),
  completions: describe({
    operationId: "createCompletion",
    summary: "Create a completion",
    description: `OpenAI's completions: the prompt is text, a list of texts, token ids, or a list of token-id lists.${LORA_EXTENSIONS}`,
    tags: ["Completions"],
    requestBody: {
      required: true,
      content: body(CompletionRequestSchema, {
        model: "support-bot",
        prompt: [1, 2, 3],
        max_tokens: 16,
        temperature: 0,
        return_token_ids: true,
      }),
    },
    responses: {
      200: {
        description: "The completion, or with stream: true its chunks",
        content: {
          ...body(CompletionResponseSchema),
          "text/event-stream": { schema: resolver(CompletionResponseSchema) },
        },
      },
      ...GENERATION_ERRORS,
    },
  }),
  models: describe({
    operationId: "listModels",
    summary: "List the base model and every adapter",
    description:
      "Adapters are models whose parent is the base model, with their state in the engine's cache.",
    tags: ["Models"],
    responses: { 200: { description: "The models", content: body(ModelListSchema) }, ...errors(401) },
  }),
  model: describe({
    operationId: "retrieveModel",
    summary: "Retrieve a model or an adapter",
    tags: ["Models"],
    responses: { 200: { description: "The model", content: body(ModelSchema) }, ...errors(401, 404) },
  }),
  health: describe({
    operationId: "health",
    summary: "The process is up",
    tags: ["Health"],
    security: [],
    responses: { 200: { description: "Up", content: body(HealthSchema) } },
  }),
  live: describe({
    operationId: "liveness",
    summary: "Liveness",
    tags: ["Health"],
    security: [],
    responses: { 200: { description: "Live", content: body(HealthSchema) } },
  }),
  ready: describe({
    operationId: "readiness",
    summary: "Readiness: answers 503 while starting or draining",
    tags: ["Health"],
    security: [],
    responses: {
      200: { description: "Ready", content: body(HealthSchema) },
      503: { description: "Not ready", content: body(HealthSchema) },
    },
  }),
  adapters: describe({
    operationId: "listAdapters",
    summary: "List the adapters of the LoRA dir with their cache state",
    description: "Admin route: needs --admin-key, or without one answers loopback clients only.",
    tags: ["Adapters"],
    responses: {
      200: { description: "The adapters and the cache", content: body(AdapterListSchema) },
      ...errors(401, 403, 404),
    },
  }),
  adapter: describe({
    operationId: "retrieveAdapter",
    summary: "One adapter and its cache state",
    tags: ["Adapters"],
    responses: {
      200: { description: "The adapter", content: body(AdapterSchema) },
      ...errors(400, 401, 403, 404),
    },
  }),
  load: describe({
    operationId: "loadAdapter",
    summary: "Load an adapter into the engine's cache, optionally pinned",
    tags: ["Adapters"],
    requestBody: { content: body(LoadAdapterRequestSchema, { pin: true }) },
    responses: {
      200: { description: "The adapter", content: body(AdapterSchema) },
      ...errors(400, 401, 403, 404, 409, 501, 503),
    },
  }),
  unload: describe({
    operationId: "unloadAdapter",
    summary: "Release an adapter from the engine's cache once its running requests end",
    tags: ["Adapters"],
    responses: {
      200: { description: "Released", content: body(AdapterSchema) },
      ...errors(400, 401, 403, 404, 501),
    },
  }),
  vllmLoad: describe({
    operationId: "loadLoraAdapter",
    summary: "vLLM's runtime load: serve the adapter at lora_path as lora_name, and load it into the engine",
    description:
      "`lora_path` (a .safetensors file in TensorRT-LLM's format, or a PEFT folder) must lead, links resolved, inside the LoRA dir or a dir of `--allowed-lora-paths` (else a 400 `lora_path_not_allowed`). A 400 `lora_already_loaded` when the name is served already. The adapter is listed at /v1/models under its name.",
    tags: ["Adapters"],
    requestBody: {
      content: body(LoadLoraAdapterRequestSchema, { lora_name: "sql", lora_path: "/adapters/sql" }),
    },
    responses: {
      200: {
        description: "Success: LoRA adapter '<name>' added successfully.",
        content: { "text/plain": { schema: { type: "string" } } },
      },
      ...errors(400, 401, 403, 404, 503),
    },
  }),
  vllmUnload: describe({
    operationId: "unloadLoraAdapter",
    summary: "vLLM's runtime unload: release an adapter from the engine (one loaded by path is forgotten)",
    tags: ["Adapters"],
    requestBody: { content: body(UnloadLoraAdapterRequestSchema, { lora_name: "sql" }) },
    responses: {
      200: {
        description: "Success: LoRA adapter '<name>' removed successfully.",
        content: { "text/plain": { schema: { type: "string" } } },
      },
      ...errors(400, 401, 403, 404),
    },
  }),
  validate: describe({
    operationId: "validateAdapter",
    summary: "Check an adapter against the served model without loading it into the engine",
    tags: ["Adapters"],
    responses: {
      200: { description: "Every problem found", content: body(ValidationResultSchema) },
      ...errors(400, 401, 403, 404),
    },
  }),
};

/** The document for `app`'s routes. */
export function openApiDocument(app: Hono<AppEnv>) {
  return generateSpecs(app, {
    documentation: {
      openapi: "3.1.0",
      info: {
        title: "multilora",
        version: VERSION,
        description: "An OpenAI-compatible server for one base model with many LoRA adapters.",
      },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
      security: [{ bearer: [] }],
    },
    exclude: ["/openapi.json", "/docs", "/docs/docs.js", "/metrics"],
    defaultValidationErrorResponse: false,
  });
}
