/**
 * An adapter that cannot be used, with each of its problems as data: the message lists them for people
 * (src/errors.ts listProblems), `problems` holds them for code (the validate route answers with them).
 */
import { type ErrorOptions, listProblems, MultiloraError } from "../errors.ts";

/** How the server answers for an adapter a request names: a 400 on `lora_model`. */
export const INVALID_LORA: ErrorOptions = { code: "invalid_lora", param: "lora_model" };

export class AdapterInvalidError extends MultiloraError {
  /** Each problem, as the message lists them. */
  readonly problems: readonly string[];

  /** `message` says the same as `problems`: listProblems(headline, problems), or the one problem itself. */
  constructor(message: string, problems: readonly string[], options: ErrorOptions = INVALID_LORA) {
    super(message, options);
    this.name = "AdapterInvalidError";
    this.problems = problems;
  }
}

/** Every problem of an adapter under one headline. `options` default to a request's invalid_lora. */
export function adapterProblems(
  headline: string,
  problems: readonly string[],
  options: ErrorOptions = INVALID_LORA,
): AdapterInvalidError {
  return new AdapterInvalidError(listProblems(headline, problems), problems, options);
}

/**
 * `e`, from reading or converting an adapter, as a request's invalid_lora: its message (after `prefix`)
 * and its problems, or its message as the one problem when it lists none.
 */
export function asInvalidLora(e: MultiloraError, prefix = ""): AdapterInvalidError {
  const problems = e instanceof AdapterInvalidError ? e.problems : [e.message];
  return new AdapterInvalidError(`${prefix}${e.message}`, problems, { ...INVALID_LORA, cause: e });
}
