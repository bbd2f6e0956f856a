/**
 * Reads a JSON file and validates it with a valibot schema, reporting every problem at once with the
 * field path it concerns.
 */
import { readFileSync } from "node:fs";
import * as v from "valibot";
import { type ErrorCode, listProblems, MultiloraError } from "../errors.ts";
import { fileError } from "./files.ts";

/** The issues of a failed parse as "field.path: message" lines. */
export function describeIssues(issues: readonly v.BaseIssue<unknown>[]): string[] {
  return issues.map((issue) => {
    const path = v.getDotPath(issue);
    return path ? `${path}: ${issue.message}` : issue.message;
  });
}

/** Validates `value` against `schema`; on failure one error lists every problem, headed by `source`. */
export function parseWith<const S extends v.GenericSchema>(
  schema: S,
  value: unknown,
  source: string,
  code: ErrorCode = "invalid_config",
): v.InferOutput<S> {
  const result = v.safeParse(schema, value);
  if (result.success) return result.output;
  throw new MultiloraError(listProblems(`${source} is not valid:`, describeIssues(result.issues)), { code });
}

/** Reads and parses the JSON file at `path` (no schema). */
export function readJson(path: string, code: ErrorCode = "invalid_config"): unknown {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw fileError(path, e, "read");
  }
  return parseJsonText(text, path, code);
}

/** Parses `text`, read from `path`, as JSON (no schema). */
export function parseJsonText(text: string, path: string, code: ErrorCode = "invalid_config"): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new MultiloraError(`${path}: not valid JSON (${(e as Error).message})`, { code });
  }
}

/** Reads the JSON file at `path` and validates it against `schema`. */
export function readJsonFile<const S extends v.GenericSchema>(
  path: string,
  schema: S,
  code: ErrorCode = "invalid_config",
): v.InferOutput<S> {
  return parseWith(schema, readJson(path, code), path, code);
}
