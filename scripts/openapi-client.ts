#!/usr/bin/env bun
/**
 * Generates openapi/client/index.ts from openapi/openapi.json (`npm run openapi` runs it after the
 * document): a TypeScript type for every request and response body, and a fetch client with one method
 * per operation (named by its operationId). No dependency: the code generators on npm need TypeScript's
 * JavaScript compiler API, which the TypeScript 7 this project type-checks with does not have.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export const CLIENT_PATH = join(import.meta.dir, "../openapi/client/index.ts");
const DOCUMENT_PATH = join(import.meta.dir, "../openapi/openapi.json");

interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  enum?: unknown[];
  const?: unknown;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  additionalProperties?: boolean | JsonSchema;
  description?: string;
}

interface Operation {
  operationId: string;
  summary?: string;
  requestBody?: { content: Record<string, { schema: JsonSchema }> };
  responses: Record<string, { content?: Record<string, { schema: JsonSchema }> }>;
  parameters?: { name: string; in: string }[];
}

/** A TypeScript type for a JSON Schema (the subset valibot's converter emits). */
export function typeOf(s: JsonSchema, indent = ""): string {
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.enum) return s.enum.map((e) => JSON.stringify(e)).join(" | ");
  const union = s.anyOf ?? s.oneOf;
  if (union) return union.map((u) => typeOf(u, indent)).join(" | ");
  const types = Array.isArray(s.type) ? s.type : s.type ? [s.type] : [];
  if (types.length > 1) return types.map((t) => typeOf({ ...s, type: t }, indent)).join(" | ");
  switch (types[0]) {
    case "string":
      return "string";
    case "number":
    case "integer":
      return "number";
    case "boolean":
      return "boolean";
    case "null":
      return "null";
    case "array":
      return `Array<${s.items ? typeOf(s.items, indent) : "unknown"}>`;
    case "object": {
      const inner = `${indent}  `;
      const fields = Object.entries(s.properties ?? {}).map(([name, p]) => {
        const optional = s.required?.includes(name) ? "" : "?";
        return `${inner}${JSON.stringify(name)}${optional}: ${typeOf(p, inner)};`;
      });
      const extra = s.additionalProperties;
      if (extra && typeof extra === "object") fields.push(`${inner}[key: string]: ${typeOf(extra, inner)};`);
      else if (extra !== false && !s.properties) fields.push(`${inner}[key: string]: unknown;`);
      return fields.length === 0 ? "Record<string, unknown>" : `{\n${fields.join("\n")}\n${indent}}`;
    }
    default:
      return "unknown";
  }
}

const pascal = (id: string) => id.charAt(0).toUpperCase() + id.slice(1);

export function generateClient(document: {
  info: { version: string };
  paths: Record<string, Record<string, Operation>>;
}): string {
  const types: string[] = [];
  const methods: string[] = [];
  for (const [path, item] of Object.entries(document.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const name = pascal(op.operationId);
      const requestSchema = op.requestBody?.content["application/json"]?.schema;
      const okSchema = op.responses["200"]?.content?.["application/json"]?.schema;
      if (requestSchema)
        types.push(
          `/** The body of ${op.operationId}. */\nexport type ${name}Request = ${typeOf(requestSchema)};`,
        );
      types.push(
        `/** The answer of ${op.operationId}. */\nexport type ${name}Response = ${okSchema ? typeOf(okSchema) : "unknown"};`,
      );
      const params = [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1] as string);
      const args = [...params.map((p) => `${p}: string`), ...(requestSchema ? [`body: ${name}Request`] : [])];
      const url = `\`${path.replace(/\{(\w+)\}/g, (_m, p) => `\${encodeURIComponent(${p})}`)}\``;
      methods.push(
        `  /** ${op.summary ?? op.operationId} (${method.toUpperCase()} ${path}) */\n` +
          `  ${op.operationId}(${args.join(", ")}): Promise<${name}Response> {\n` +
          `    return this.call("${method.toUpperCase()}", ${url}, ${requestSchema ? "body" : "undefined"});\n` +
          "  }",
      );
    }
  }
  return `/**
 * multilora API client ${document.info.version}, generated from openapi/openapi.json by
 * scripts/openapi-client.ts (\`npm run openapi\`). Do not edit by hand.
 */

${types.join("\n\n")}

/** An error answer, in OpenAI's shape. */
export interface ApiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: ApiErrorBody,
  ) {
    super(body.error.message);
    this.name = "ApiError";
  }
}

export interface ClientOptions {
  /** e.g. "http://localhost:3000" */
  baseUrl: string;
  /** Sent as "Authorization: Bearer <apiKey>". */
  apiKey?: string;
  fetch?: typeof fetch;
}

export class MultiloraClient {
  constructor(private readonly options: ClientOptions) {}

  private async call<T>(method: string, path: string, body: unknown): Promise<T> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (this.options.apiKey) headers.authorization = \`Bearer \${this.options.apiKey}\`;
    const response = await (this.options.fetch ?? fetch)(\`\${this.options.baseUrl}\${path}\`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) throw new ApiError(response.status, data as ApiErrorBody);
    return data as T;
  }

${methods.join("\n\n")}
}
`;
}

if (import.meta.main) {
  writeFileSync(CLIENT_PATH, generateClient(JSON.parse(readFileSync(DOCUMENT_PATH, "utf8"))));
  console.log(`wrote ${CLIENT_PATH}`);
}
