/**
 * The one error class of multilora. Every layer throws it; the server turns it into OpenAI's error shape
 * (`{"error": {"message", "type", "param", "code"}}`) and the CLI prints its message.
 *
 * Messages are written for the person who must act on them: they name the file, the tensor or the field
 * and say what is wrong with it.
 */
export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
  | "not_found_error"
  | "server_error"
  | "overloaded_error"
  | "not_implemented_error";

export interface ErrorOptions {
  /** HTTP status when this error reaches a client. Default 400. */
  status?: number;
  /** OpenAI error type. Default `invalid_request_error`. */
  type?: ErrorType;
  /** Machine-readable code, e.g. `invalid_safetensors`, `unsupported_adapter`. */
  code?: string;
  /** The request field at fault, when there is one. */
  param?: string;
  cause?: unknown;
}

export class MultiloraError extends Error {
  readonly status: number;
  readonly type: ErrorType;
  readonly code: string | null;
  readonly param: string | null;

  constructor(message: string, options: ErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.name = "MultiloraError";
    this.status = options.status ?? 400;
    this.type = options.type ?? "invalid_request_error";
    this.code = options.code ?? null;
    this.param = options.param ?? null;
  }
}

/** Joins several problems into one message: a headline, then one problem per line. */
export function listProblems(headline: string, problems: readonly string[]): string {
  return [headline, ...problems.map((p) => `  - ${p}`)].join("\n");
}
