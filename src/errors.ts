/**
 * The one error class of multilora. Every layer throws it with a stable code; the server turns it into
 * OpenAI's error shape (`{"error": {"message", "type", "param", "code"}}`), choosing the HTTP status and
 * type from the code in one place (src/server/errors.ts), and the CLI prints its message.
 *
 * Messages are written for the person who must act on them: they name the file, the tensor or the field
 * and say what is wrong with it.
 */

/** Every code an error may carry: stable, part of the API (clients match on them). */
export const ERROR_CODES = [
  // the request
  "invalid_request",
  "invalid_json",
  "invalid_msgpack",
  "request_too_large",
  "request_timeout",
  "context_length_exceeded",
  "invalid_token_id",
  "unsupported_field",
  "unsupported_content",
  "no_chat_template",
  "chat_template_error",
  "invalid_argument",
  "cancelled",
  // output constraints (response_format, structured_outputs)
  "invalid_schema",
  "unsupported_schema",
  "constraint_too_complex",
  // models and adapters
  "model_not_found",
  "route_not_found",
  "method_not_allowed",
  "not_found",
  "conflicting_adapter",
  "invalid_lora_name",
  "lora_not_found",
  "invalid_lora",
  "lora_invalid",
  "lora_not_cached",
  "lora_changed",
  "pin_limit",
  "lora_path_not_allowed",
  "lora_already_loaded",
  // auth
  "invalid_api_key",
  "admin_loopback_only",
  "adapter_not_allowed",
  "admin_key_required",
  // the server
  "overloaded",
  "too_many_requests",
  "queue_timeout",
  "shutting_down",
  "starting",
  "lora_cache_full",
  "out_of_memory",
  "engine_closed",
  "unsupported",
  "internal_error",
  "internal",
  "native_library_missing",
  "backend_unavailable",
  "invalid_chat_template",
  // files, models and settings (the CLI, start-up, adapters read from disk)
  "usage",
  "invalid_config",
  "invalid_model",
  "invalid_lora_dir",
  "invalid_adapter",
  "invalid_adapter_config",
  "unsupported_adapter",
  "invalid_tensor",
  "invalid_safetensors",
  "invalid_tokenizer",
  "invalid_demo_tokenizer",
  "tokenizer_not_found",
  "file_not_found",
  "io_error",
  "insufficient_storage",
  "storage_unwritable",
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export interface ErrorOptions {
  /** Machine-readable and stable, e.g. `invalid_safetensors`, `lora_not_cached`. */
  code: ErrorCode;
  /** The request field at fault, when there is one. */
  param?: string;
  cause?: unknown;
}

export class MultiloraError extends Error {
  readonly code: ErrorCode;
  readonly param: string | null;

  constructor(message: string, options: ErrorOptions) {
    super(message, { cause: options.cause });
    this.name = "MultiloraError";
    this.code = options.code;
    this.param = options.param ?? null;
  }
}

/** Joins several problems into one message: a headline, then one problem per line. */
export function listProblems(headline: string, problems: readonly string[]): string {
  return [headline, ...problems.map((p) => `  - ${p}`)].join("\n");
}
