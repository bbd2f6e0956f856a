/**
 * Wire formats: JSON by default, MessagePack when the request's Content-Type or Accept is
 * `application/msgpack` (bodies, responses, errors, and streams as concatenated MessagePack records).
 * Only plain MessagePack is written (no msgpackr records or other extensions), so any client library
 * decodes it.
 */
import { Packr } from "msgpackr";

export const MSGPACK = "application/msgpack";

/** Plain MessagePack: maps as maps, no record extension, no structure sharing. */
const packr = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: true, moreTypes: false });

export function isMsgpack(contentType: string | null | undefined): boolean {
  return (contentType ?? "").split(";")[0]?.trim().toLowerCase() === MSGPACK;
}

/** Whether the response to `request` should be MessagePack: asked for in Accept, or the body was MessagePack. */
export function wantsMsgpack(request: Request): boolean {
  const accept = request.headers.get("accept") ?? "";
  if (accept.toLowerCase().includes(MSGPACK)) return true;
  if (accept.toLowerCase().includes("application/json")) return false;
  return isMsgpack(request.headers.get("content-type"));
}

export function encodeMsgpack(value: unknown): Uint8Array {
  return packr.pack(value);
}

/**
 * The value of a MessagePack body. 64-bit integers (int64 0xd3, uint64 0xcf, which Go, Java and some Python
 * encoders write even for small numbers) come out as numbers when they are exact ones (|n| <= 2^53 - 1);
 * a larger one throws, naming where it is.
 */
export function decodeMsgpack(bytes: Uint8Array): unknown {
  return exactNumbers(packr.unpack(bytes), "");
}

function exactNumbers(value: unknown, path: string): unknown {
  if (typeof value === "bigint") {
    if (value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER))
      return Number(value);
    throw new Error(
      `the integer ${value}${path ? ` at ${path}` : ""} is too large to be read exactly (at most 2^53 - 1 in magnitude)`,
    );
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = exactNumbers(value[i], `${path}[${i}]`);
  } else if (typeof value === "object" && value !== null && !(value instanceof Uint8Array)) {
    const record = value as Record<string, unknown>;
    for (const key of Object.keys(record))
      record[key] = exactNumbers(record[key], path ? `${path}.${key}` : key);
  }
  return value;
}

/** A response with `body` in the format the request wants. */
export function reply(
  request: Request,
  body: unknown,
  status = 200,
  headers: Record<string, string> = {},
): Response {
  if (wantsMsgpack(request)) {
    return new Response(encodeMsgpack(body), { status, headers: { "content-type": MSGPACK, ...headers } });
  }
  return Response.json(body, { status, headers });
}
