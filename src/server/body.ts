/**
 * Reading a request body, JSON or MessagePack (by Content-Type): size limit (413), valid encoding (400),
 * its schema (400 listing every problem).
 */
import * as v from "valibot";
import { MultiloraError } from "../errors.ts";
import { invalidBody } from "./errors.ts";
import { decodeMsgpack, isMsgpack } from "./wire.ts";

/** `optional`: an empty body reads as `{}` (routes whose every field has a default, e.g. an adapter load). */
export async function readBody<const S extends v.GenericSchema>(
  request: Request,
  schema: S,
  maxBytes: number,
  options: { optional?: boolean } = {},
): Promise<v.InferOutput<S>> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > maxBytes) throw tooLarge(declared, maxBytes);
  const bytes = new Uint8Array(await request.arrayBuffer());
  if (bytes.length > maxBytes) throw tooLarge(bytes.length, maxBytes);
  const body =
    bytes.length === 0 && options.optional
      ? {}
      : isMsgpack(request.headers.get("content-type"))
        ? parseMsgpack(bytes)
        : parseJson(bytes);
  if (typeof body !== "object" || body === null || Array.isArray(body) || body instanceof Uint8Array) {
    throw new MultiloraError("the request body must be an object (a JSON object or a MessagePack map)", {
      code: "invalid_json",
    });
  }
  const result = v.safeParse(schema, body);
  if (!result.success) throw invalidBody(result.issues);
  return result.output;
}

function parseJson(bytes: Uint8Array): unknown {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new MultiloraError("the request body is not valid UTF-8", { code: "invalid_json" });
  }
  try {
    return text.length === 0 ? undefined : JSON.parse(text);
  } catch (e) {
    throw new MultiloraError(`the request body is not valid JSON: ${(e as Error).message}`, {
      code: "invalid_json",
    });
  }
}

function parseMsgpack(bytes: Uint8Array): unknown {
  if (bytes.length === 0) return undefined;
  try {
    return decodeMsgpack(bytes);
  } catch (e) {
    throw new MultiloraError(`the request body is not valid MessagePack: ${(e as Error).message}`, {
      code: "invalid_msgpack",
    });
  }
}

function tooLarge(size: number, max: number): MultiloraError {
  return new MultiloraError(`the request body has ${size} bytes; the limit is ${max} (--max-body-mb)`, {
    code: "request_too_large",
  });
}
