/**
 * Reading a request body, JSON or MessagePack (by Content-Type): size limit (413, counted as the bytes
 * arrive), read timeout (408: a client that stalls mid-upload holds its connection no longer), valid
 * encoding (400), its schema (400 listing every problem).
 */
import * as v from "valibot";
import { MultiloraError } from "../errors.ts";
import { invalidBody } from "./errors.ts";
import { decodeMsgpack, isMsgpack } from "./wire.ts";

/**
 * `optional`: an empty body reads as `{}` (routes whose every field has a default, e.g. an adapter load).
 * `timeoutMs`: the longest the whole body may take to arrive (`--body-timeout`; 0 or absent: none).
 */
export async function readBody<const S extends v.GenericSchema>(
  request: Request,
  schema: S,
  maxBytes: number,
  options: { optional?: boolean; timeoutMs?: number } = {},
): Promise<v.InferOutput<S>> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > maxBytes) throw tooLarge(declared, maxBytes);
  const bytes = await readBytes(request, maxBytes, options.timeoutMs ?? 0);
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

/** The body's bytes, at most `maxBytes`, within `timeoutMs` (0: no limit). */
async function readBytes(request: Request, maxBytes: number, timeoutMs: number): Promise<Uint8Array> {
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline =
    timeoutMs > 0
      ? new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(stalled(timeoutMs)), timeoutMs);
        })
      : null;
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await (deadline ? Promise.race([reader.read(), deadline]) : reader.read());
      if (done) break;
      total += value.length;
      if (total > maxBytes) throw tooLarge(total, maxBytes);
      chunks.push(value);
    }
  } catch (e) {
    reader.cancel().catch(() => {});
    throw e;
  } finally {
    clearTimeout(timer);
  }
  if (chunks.length === 1) return chunks[0] as Uint8Array;
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  return bytes;
}

function stalled(timeoutMs: number): MultiloraError {
  return new MultiloraError(
    `the request body did not arrive within ${timeoutMs / 1000} s (--body-timeout); send it whole, without pauses`,
    { code: "request_timeout" },
  );
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
