/**
 * Worker thread that waits on the engine's responses (mlr_await_responses blocks here, never on the main
 * event loop) and posts them, decoded, to the engine object on the main thread.
 *
 * Protocol: the main thread posts { engine, stop, library } once (stop: a SharedArrayBuffer Int32Array flag;
 * library: the native library's path);
 * the worker posts { responses } batches, and { stopped: true } after it sees the flag.
 */
import { ptr } from "bun:ffi";
import { MLR_MAX_TOP_LOGPROBS, nativeSymbols, RESPONSE, StructView } from "./native.ts";

declare const self: Worker;

/** One mlr_response as plain data. */
export interface RawResponse {
  requestId: bigint;
  status: number;
  finishReason: number;
  token: number;
  /** The response carries a logprob (the request asked for them): `logprob` may then be exactly 0. */
  hasLogprob: boolean;
  logprob: number;
  top: { token: number; logprob: number }[];
  error: string;
}

const BATCH = 64;
const WAIT_MS = 50;

function decode(bytes: Uint8Array, i: number): RawResponse {
  const r = new StructView(RESPONSE, bytes, i * RESPONSE.size);
  const nTop = Math.min(r.get("n_top"), MLR_MAX_TOP_LOGPROBS);
  const top = [];
  for (let k = 0; k < nTop; k++)
    top.push({ token: r.element("top_ids", k), logprob: r.element("top_logprobs", k) });
  return {
    requestId: r.view.getBigUint64(i * RESPONSE.size + RESPONSE.offset("request_id"), true),
    status: r.get("status"),
    finishReason: r.get("finish_reason"),
    token: r.get("token"),
    hasLogprob: r.get("has_logprob") !== 0,
    logprob: r.get("logprob"),
    top,
    error: r.get("status") === 0 ? "" : r.text("error"),
  };
}

self.onmessage = (event: MessageEvent<{ engine: number; stop: Int32Array; library: string }>) => {
  const { engine, stop, library } = event.data;
  process.env.MULTILORA_LIB = library; // the very library the engine lives in (workers start with their own env)
  const lib = nativeSymbols();
  const buffer = new Uint8Array(RESPONSE.size * BATCH);
  const count = new Int32Array(1);
  while (Atomics.load(stop, 0) === 0) {
    lib.mlr_await_responses(engine as never, ptr(buffer), BATCH, WAIT_MS, ptr(count));
    const n = count[0] as number;
    if (n > 0) self.postMessage({ responses: Array.from({ length: n }, (_, i) => decode(buffer, i)) });
  }
  self.postMessage({ stopped: true });
};
