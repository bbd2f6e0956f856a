/**
 * multilora API client 0.1.0, generated from openapi/openapi.json by
 * scripts/openapi-client.ts (`npm run openapi`). Do not edit by hand.
 */

/** The answer of health. */
export type HealthResponse = {
  "status": string;
  "running"?: number;
  "queued"?: number;
};

/** The answer of liveness. */
export type LivenessResponse = {
  "status": string;
  "running"?: number;
  "queued"?: number;
};

/** The answer of readiness. */
export type ReadinessResponse = {
  "status": string;
  "running"?: number;
  "queued"?: number;
};

/** The answer of listModels. */
export type ListModelsResponse = {
  "object": "list";
  "data": Array<{
    "id": string;
    "object": "model";
    "created": number;
    "owned_by": string;
    "root"?: string;
    "parent": string | null;
    "lora"?: {
      "name": string;
      "format": "trtllm" | "peft";
      "state": "on_disk" | "cached" | "pinned";
      "state_estimated": boolean;
      "active_requests": number;
      "version"?: string;
      "task_id"?: number;
      "rank"?: number;
      "ranks"?: Array<number>;
      "modules"?: Array<string>;
      "layers"?: number;
      "dtype"?: string;
      "bytes"?: number;
      "base_model"?: string | null;
      "warnings"?: Array<string>;
      "loaded_at"?: number;
      "last_used_step"?: number | null;
    };
  }>;
};

/** The answer of retrieveModel. */
export type RetrieveModelResponse = {
  "id": string;
  "object": "model";
  "created": number;
  "owned_by": string;
  "root"?: string;
  "parent": string | null;
  "lora"?: {
    "name": string;
    "format": "trtllm" | "peft";
    "state": "on_disk" | "cached" | "pinned";
    "state_estimated": boolean;
    "active_requests": number;
    "version"?: string;
    "task_id"?: number;
    "rank"?: number;
    "ranks"?: Array<number>;
    "modules"?: Array<string>;
    "layers"?: number;
    "dtype"?: string;
    "bytes"?: number;
    "base_model"?: string | null;
    "warnings"?: Array<string>;
    "loaded_at"?: number;
    "last_used_step"?: number | null;
  };
};

/** The body of createChatCompletion. */
export type CreateChatCompletionRequest = {
  "model": string;
  "max_tokens"?: number | null;
  "temperature"?: number | null;
  "top_p"?: number | null;
  "n"?: number;
  "stop"?: string | Array<string> | null;
  "seed"?: number | null;
  "presence_penalty"?: number | null;
  "frequency_penalty"?: number | null;
  "stream"?: boolean;
  "stream_options"?: {
    "include_usage"?: boolean;
  } | null;
  "user"?: string;
  "lora_model"?: string | null;
  "load_lora_weights"?: "auto" | "always" | "never";
  "lora_scale"?: number;
  "top_k"?: number | null;
  "min_p"?: number | null;
  "repetition_penalty"?: number | null;
  "return_token_ids"?: boolean;
  "logit_bias"?: {
    [key: string]: number;
  } | null;
  "response_format"?: {
    "type": "text";
  } | {
    "type": "json_object";
  } | {
    "type": "json_schema";
    "json_schema": {
      "name": string;
      "description"?: string;
      "schema": {
        [key: string]: unknown;
      } | boolean;
      "strict"?: boolean | null;
    };
  } | null;
  "structured_outputs"?: {
    "json"?: {
      [key: string]: unknown;
    } | boolean | string;
    "regex"?: string;
    "choice"?: Array<string>;
    "json_object"?: boolean;
  } | null;
  "guided_json"?: {
    [key: string]: unknown;
  } | boolean | string | null;
  "guided_regex"?: string | null;
  "guided_choice"?: Array<string> | null;
  "tools"?: Array<{
    "type": "function";
    "function": {
      "name": string;
      "description"?: string;
      "parameters"?: {
        [key: string]: unknown;
      };
      "strict"?: boolean | null;
    };
  }> | null;
  "tool_choice"?: "none" | "auto" | "required" | {
    "type": "function";
    "function": {
      "name": string;
    };
  } | null;
  "parallel_tool_calls"?: boolean;
  "messages": Array<{
    "role": "system" | "developer" | "user" | "assistant" | "tool";
    "content"?: string | Array<{
      "type": "text";
      "text": string;
    }> | null;
    "name"?: string;
    "tool_call_id"?: string;
    "tool_calls"?: Array<unknown>;
  }>;
  "max_completion_tokens"?: number | null;
  "logprobs"?: boolean;
  "top_logprobs"?: number | null;
};

/** The answer of createChatCompletion. */
export type CreateChatCompletionResponse = {
  "id": string;
  "object": "chat.completion";
  "created": number;
  "model": string;
  "choices": Array<{
    "index": number;
    "message": {
      "role": "assistant";
      "content": string;
    };
    "logprobs": {
      "content": Array<{
        "token": string;
        "logprob": number;
        "bytes": Array<number>;
        "top_logprobs": Array<{
          "token": string;
          "logprob": number;
          "bytes": Array<number>;
        }>;
      }>;
    } | null;
    "finish_reason": "stop" | "length" | null;
    "token_ids"?: Array<number>;
  }>;
  "usage": {
    "prompt_tokens": number;
    "completion_tokens": number;
    "total_tokens": number;
  };
  "prompt_token_ids"?: Array<number>;
};

/** The body of createCompletion. */
export type CreateCompletionRequest = {
  "model": string;
  "max_tokens"?: number | null;
  "temperature"?: number | null;
  "top_p"?: number | null;
  "n"?: number;
  "stop"?: string | Array<string> | null;
  "seed"?: number | null;
  "presence_penalty"?: number | null;
  "frequency_penalty"?: number | null;
  "stream"?: boolean;
  "stream_options"?: {
    "include_usage"?: boolean;
  } | null;
  "user"?: string;
  "lora_model"?: string | null;
  "load_lora_weights"?: "auto" | "always" | "never";
  "lora_scale"?: number;
  "top_k"?: number | null;
  "min_p"?: number | null;
  "repetition_penalty"?: number | null;
  "return_token_ids"?: boolean;
  "logit_bias"?: {
    [key: string]: number;
  } | null;
  "response_format"?: {
    "type": "text";
  } | {
    "type": "json_object";
  } | {
    "type": "json_schema";
    "json_schema": {
      "name": string;
      "description"?: string;
      "schema": {
        [key: string]: unknown;
      } | boolean;
      "strict"?: boolean | null;
    };
  } | null;
  "structured_outputs"?: {
    "json"?: {
      [key: string]: unknown;
    } | boolean | string;
    "regex"?: string;
    "choice"?: Array<string>;
    "json_object"?: boolean;
  } | null;
  "guided_json"?: {
    [key: string]: unknown;
  } | boolean | string | null;
  "guided_regex"?: string | null;
  "guided_choice"?: Array<string> | null;
  "prompt": string | Array<string> | Array<number> | Array<Array<number>>;
  "logprobs"?: number | null;
  "echo"?: boolean;
};

/** The answer of createCompletion. */
export type CreateCompletionResponse = {
  "id": string;
  "object": "text_completion";
  "created": number;
  "model": string;
  "choices": Array<{
    "index": number;
    "text": string;
    "logprobs": {
      "tokens": Array<string>;
      "token_logprobs": Array<number>;
      "top_logprobs": Array<{
        [key: string]: number;
      }>;
      "text_offset": Array<number>;
    } | null;
    "finish_reason": "stop" | "length" | null;
    "token_ids"?: Array<number>;
    "prompt_token_ids"?: Array<number>;
  }>;
  "usage"?: {
    "prompt_tokens": number;
    "completion_tokens": number;
    "total_tokens": number;
  };
};

/** The answer of listAdapters. */
export type ListAdaptersResponse = {
  "object": "list";
  "data": Array<{
    "name": string;
    "format": "trtllm" | "peft";
    "state": "on_disk" | "cached" | "pinned";
    "state_estimated": boolean;
    "active_requests": number;
    "version"?: string;
    "task_id"?: number;
    "rank"?: number;
    "ranks"?: Array<number>;
    "modules"?: Array<string>;
    "layers"?: number;
    "dtype"?: string;
    "bytes"?: number;
    "base_model"?: string | null;
    "warnings"?: Array<string>;
    "loaded_at"?: number;
    "last_used_step"?: number | null;
  }>;
  "cache": {
    "bytes_used": number;
    "bytes_capacity": number;
    "adapters": number;
    "max_adapters": number | null;
    "estimated": boolean;
  };
};

/** The answer of retrieveAdapter. */
export type RetrieveAdapterResponse = {
  "name": string;
  "format": "trtllm" | "peft";
  "state": "on_disk" | "cached" | "pinned";
  "state_estimated": boolean;
  "active_requests": number;
  "version"?: string;
  "task_id"?: number;
  "rank"?: number;
  "ranks"?: Array<number>;
  "modules"?: Array<string>;
  "layers"?: number;
  "dtype"?: string;
  "bytes"?: number;
  "base_model"?: string | null;
  "warnings"?: Array<string>;
  "loaded_at"?: number;
  "last_used_step"?: number | null;
};

/** The body of loadAdapter. */
export type LoadAdapterRequest = {
  "pin"?: boolean;
};

/** The answer of loadAdapter. */
export type LoadAdapterResponse = {
  "name": string;
  "format": "trtllm" | "peft";
  "state": "on_disk" | "cached" | "pinned";
  "state_estimated": boolean;
  "active_requests": number;
  "version"?: string;
  "task_id"?: number;
  "rank"?: number;
  "ranks"?: Array<number>;
  "modules"?: Array<string>;
  "layers"?: number;
  "dtype"?: string;
  "bytes"?: number;
  "base_model"?: string | null;
  "warnings"?: Array<string>;
  "loaded_at"?: number;
  "last_used_step"?: number | null;
};

/** The answer of unloadAdapter. */
export type UnloadAdapterResponse = {
  "name": string;
  "format": "trtllm" | "peft";
  "state": "on_disk" | "cached" | "pinned";
  "state_estimated": boolean;
  "active_requests": number;
  "version"?: string;
  "task_id"?: number;
  "rank"?: number;
  "ranks"?: Array<number>;
  "modules"?: Array<string>;
  "layers"?: number;
  "dtype"?: string;
  "bytes"?: number;
  "base_model"?: string | null;
  "warnings"?: Array<string>;
  "loaded_at"?: number;
  "last_used_step"?: number | null;
};

/** The answer of validateAdapter. */
export type ValidateAdapterResponse = {
  "name": string;
  "valid": boolean;
  "problems": Array<string>;
  "warnings": Array<string>;
};

/** The body of loadLoraAdapter. */
export type LoadLoraAdapterRequest = {
  "lora_name": string;
  "lora_path": string;
};

/** The answer of loadLoraAdapter. */
export type LoadLoraAdapterResponse = unknown;

/** The body of unloadLoraAdapter. */
export type UnloadLoraAdapterRequest = {
  "lora_name": string;
};

/** The answer of unloadLoraAdapter. */
export type UnloadLoraAdapterResponse = unknown;

/** An error answer, in OpenAI's shape. */
export interface ApiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: ApiErrorBody,
  ) {
    super(body.error.message);
    this.name = "ApiError";
  }
}

export interface ClientOptions {
  /** e.g. "http://localhost:3000" */
  baseUrl: string;
  /** Sent as "Authorization: Bearer <apiKey>". */
  apiKey?: string;
  fetch?: typeof fetch;
}

export class MultiloraClient {
  constructor(private readonly options: ClientOptions) {}

  private async call<T>(method: string, path: string, body: unknown): Promise<T> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (this.options.apiKey) headers.authorization = `Bearer ${this.options.apiKey}`;
    const response = await (this.options.fetch ?? fetch)(`${this.options.baseUrl}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) throw new ApiError(response.status, data as ApiErrorBody);
    return data as T;
  }

  /** The process is up (GET /health) */
  health(): Promise<HealthResponse> {
    return this.call("GET", `/health`, undefined);
  }

  /** Liveness (GET /v1/health/live) */
  liveness(): Promise<LivenessResponse> {
    return this.call("GET", `/v1/health/live`, undefined);
  }

  /** Readiness: answers 503 while starting or draining (GET /v1/health/ready) */
  readiness(): Promise<ReadinessResponse> {
    return this.call("GET", `/v1/health/ready`, undefined);
  }

  /** List the base model and every adapter (GET /v1/models) */
  listModels(): Promise<ListModelsResponse> {
    return this.call("GET", `/v1/models`, undefined);
  }

  /** Retrieve a model or an adapter (GET /v1/models/{id}) */
  retrieveModel(id: string): Promise<RetrieveModelResponse> {
    return this.call("GET", `/v1/models/${encodeURIComponent(id)}`, undefined);
  }

  /** Create a chat completion (POST /v1/chat/completions) */
  createChatCompletion(body: CreateChatCompletionRequest): Promise<CreateChatCompletionResponse> {
    return this.call("POST", `/v1/chat/completions`, body);
  }

  /** Create a completion (POST /v1/completions) */
  createCompletion(body: CreateCompletionRequest): Promise<CreateCompletionResponse> {
    return this.call("POST", `/v1/completions`, body);
  }

  /** List the adapters of the LoRA dir with their cache state (GET /v1/lora/adapters) */
  listAdapters(): Promise<ListAdaptersResponse> {
    return this.call("GET", `/v1/lora/adapters`, undefined);
  }

  /** One adapter and its cache state (GET /v1/lora/adapters/{name}) */
  retrieveAdapter(name: string): Promise<RetrieveAdapterResponse> {
    return this.call("GET", `/v1/lora/adapters/${encodeURIComponent(name)}`, undefined);
  }

  /** Load an adapter into the engine's cache, optionally pinned (POST /v1/lora/adapters/{name}/load) */
  loadAdapter(name: string, body: LoadAdapterRequest): Promise<LoadAdapterResponse> {
    return this.call("POST", `/v1/lora/adapters/${encodeURIComponent(name)}/load`, body);
  }

  /** Release an adapter from the engine's cache once its running requests end (POST /v1/lora/adapters/{name}/unload) */
  unloadAdapter(name: string): Promise<UnloadAdapterResponse> {
    return this.call("POST", `/v1/lora/adapters/${encodeURIComponent(name)}/unload`, undefined);
  }

  /** Check an adapter against the served model without loading it into the engine (POST /v1/lora/adapters/{name}/validate) */
  validateAdapter(name: string): Promise<ValidateAdapterResponse> {
    return this.call("POST", `/v1/lora/adapters/${encodeURIComponent(name)}/validate`, undefined);
  }

  /** vLLM's runtime load: serve the adapter at lora_path as lora_name, and load it into the engine (POST /v1/load_lora_adapter) */
  loadLoraAdapter(body: LoadLoraAdapterRequest): Promise<LoadLoraAdapterResponse> {
    return this.call("POST", `/v1/load_lora_adapter`, body);
  }

  /** vLLM's runtime unload: release an adapter from the engine (one loaded by path is forgotten) (POST /v1/unload_lora_adapter) */
  unloadLoraAdapter(body: UnloadLoraAdapterRequest): Promise<UnloadLoraAdapterResponse> {
    return this.call("POST", `/v1/unload_lora_adapter`, body);
  }
}
