/** Reading a JSON request body: size limit (413), valid JSON (400), its schema (400 listing every problem). */
import * as v from "valibot";
import { MultiloraError } from "../errors.ts";
import { invalidBody } from "./errors.ts";

export async function readBody<const S extends v.GenericSchema>(
  request: Request,
  schema: S,
  maxBytes: number,
): Promise<v.InferOutput<S>> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > maxBytes) throw tooLarge(declared, maxBytes);
  const bytes = new Uint8Array(await request.arrayBuffer());
  if (bytes.length > maxBytes) throw tooLarge(bytes.length, maxBytes);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new MultiloraError("the request body is not valid UTF-8", { code: "invalid_json" });
  }
  let json: unknown;
  try {
    json = text.length === 0 ? undefined : JSON.parse(text);
  } catch (e) {
    throw new MultiloraError(`the request body is not valid JSON: ${(e as Error).message}`, {
      code: "invalid_json",
    });
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new MultiloraError("the request body must be a JSON object", { code: "invalid_json" });
  }
  const result = v.safeParse(schema, json);
  if (!result.success) throw invalidBody(result.issues);
  return result.output;
}

function tooLarge(size: number, max: number): MultiloraError {
  return new MultiloraError(`the request body has ${size} bytes; the limit is ${max} (--max-body-mb)`, {
    status: 413,
    code: "request_too_large",
  });
}
