/**
 * The one place errors become responses, in OpenAI's shape:
 * {"error": {"message", "type", "param", "code"}} with a real status code. A 500 means a bug, and says so.
 */
import * as v from "valibot";
import { MultiloraError } from "../errors.ts";
import { describeIssues } from "../formats/json-file.ts";
import { reply } from "./wire.ts";

export function errorBody(e: MultiloraError) {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

/** Any thrown value as a MultiloraError (unknown errors become a 500 that names itself a bug). */
export function asMultiloraError(e: unknown): MultiloraError {
  if (e instanceof MultiloraError) return e;
  if (e instanceof v.ValiError) return invalidBody(e.issues);
  return new MultiloraError(`internal error (a bug in multilora): ${(e as Error)?.message ?? String(e)}`, {
    status: 500,
    type: "server_error",
    code: "internal_error",
    cause: e,
  });
}

/** The error as a response, in the format `request` wants (JSON without one). */
export function errorResponse(e: unknown, request?: Request): Response {
  const err = asMultiloraError(e);
  const headers: Record<string, string> = err.status === 503 ? { "retry-after": "1" } : {};
  if (request) return reply(request, errorBody(err), err.status, headers);
  return Response.json(errorBody(err), { status: err.status, headers });
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

export function notFound(what: string): MultiloraError {
  return new MultiloraError(what, { status: 404, type: "not_found_error", code: "not_found" });
}
