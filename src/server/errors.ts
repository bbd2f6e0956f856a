/**
 * The one place errors become responses, in OpenAI's shape {"error": {"message", "type", "param", "code"}}:
 * the HTTP status and OpenAI's error type are chosen here from the error's code, for every layer. A 500
 * means a bug, and says so.
 */
import * as v from "valibot";
import { type ErrorCode, MultiloraError } from "../errors.ts";
import { storageErrorCode } from "../formats/files.ts";
import { describeIssues } from "../formats/json-file.ts";
import { reply } from "./wire.ts";

export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
  | "not_found_error"
  | "server_error"
  | "overloaded_error"
  | "not_implemented_error";

/** The status of every code that is not a 400. */
const STATUS: Partial<Record<ErrorCode, number>> = {
  invalid_api_key: 401,
  admin_loopback_only: 403,
  adapter_not_allowed: 403,
  admin_key_required: 403,
  model_not_found: 404,
  route_not_found: 404,
  method_not_allowed: 405,
  not_found: 404,
  lora_not_found: 404,
  lora_not_cached: 409,
  lora_changed: 409,
  pin_limit: 409,
  request_timeout: 408,
  request_too_large: 413,
  too_many_requests: 429,
  cancelled: 499,
  internal_error: 500,
  internal: 500,
  native_library_missing: 500,
  invalid_chat_template: 500,
  unsupported: 501,
  backend_unavailable: 501,
  overloaded: 503,
  queue_timeout: 503,
  shutting_down: 503,
  starting: 503,
  lora_cache_full: 503,
  out_of_memory: 503,
  engine_closed: 503,
  storage_unwritable: 503,
  insufficient_storage: 507,
};

export function httpStatus(code: ErrorCode): number {
  return STATUS[code] ?? 400;
}

function errorType(status: number): ErrorType {
  if (status === 401) return "authentication_error";
  if (status === 403) return "permission_error";
  if (status === 404) return "not_found_error";
  if (status === 405) return "invalid_request_error";
  if (status === 501) return "not_implemented_error";
  if (status === 503 || status === 429) return "overloaded_error";
  return status >= 500 ? "server_error" : "invalid_request_error";
}

export function errorBody(e: MultiloraError) {
  return { error: { message: e.message, type: errorType(httpStatus(e.code)), param: e.param, code: e.code } };
}

/**
 * Any thrown value as a MultiloraError (unknown errors become a 500 that names itself a bug). A failure
 * of the server's own storage (a full disk while converting an adapter) is answered as that, whatever
 * wrapped it (an adapter error would blame the client with a 400).
 */
export function asMultiloraError(e: unknown): MultiloraError {
  const storage = storageFailure(e);
  if (storage) {
    const message = e instanceof Error ? e.message : String(e);
    const why =
      storage === "insufficient_storage" ? "the server's disk is full" : "the server's storage is read-only";
    return new MultiloraError(`${why}, not a problem with the request: ${message}`, {
      code: storage,
      cause: e,
    });
  }
  if (e instanceof MultiloraError) return e;
  if (e instanceof v.ValiError) return invalidBody(e.issues);
  return new MultiloraError(`internal error (a bug in multilora): ${(e as Error)?.message ?? String(e)}`, {
    code: "internal_error",
    cause: e,
  });
}

/** The error as a response, in the format `request` wants (JSON without one). */
export function errorResponse(e: unknown, request?: Request): Response {
  const err = asMultiloraError(e);
  const status = httpStatus(err.code);
  const headers: Record<string, string> = status === 503 || status === 429 ? { "retry-after": "1" } : {};
  // A body that stalled is still owed on the connection: close it rather than wait for the rest.
  if (err.code === "request_timeout") headers.connection = "close";
  if (request) return reply(request, errorBody(err), status, headers);
  return Response.json(errorBody(err), { status, headers });
}

/** A body that failed its schema: every problem listed, the first one's field as `param`. */
export function invalidBody(issues: readonly v.BaseIssue<unknown>[]): MultiloraError {
  const lines = describeIssues(issues);
  const first = issues[0] ? v.getDotPath(issues[0]) : null;
  return new MultiloraError(`invalid request: ${lines.join("; ")}`, {
    code: "invalid_request",
    param: first ?? undefined,
  });
}

/** The storage error code somewhere in `e`'s cause chain (an errno, or a MultiloraError with that code). */
function storageFailure(e: unknown): "insufficient_storage" | "storage_unwritable" | null {
  for (let at: unknown = e, depth = 0; at && depth < 8; at = (at as Error).cause, depth++) {
    if (
      at instanceof MultiloraError &&
      (at.code === "insufficient_storage" || at.code === "storage_unwritable")
    )
      return at.code;
    const code = storageErrorCode(at);
    if (code) return code;
  }
  return null;
}
