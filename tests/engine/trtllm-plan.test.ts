/**
 * The TensorRT-LLM shim's decisions that need no TensorRT-LLM (ffi/common/trtllm_plan.c, built into
 * libmultilora.so too): what SamplingConfig gets for a request, and where a streaming Result's new
 * tokens' logprobs start.
 */
import { ptr } from "bun:ffi";
import { describe, expect, test } from "bun:test";
import { nativeSymbols, REQUEST, StructView } from "../../src/engine/native.ts";

function sampling(fields: Record<string, number>): string {
  const request = new StructView(REQUEST);
  nativeSymbols().mlr_request_default(ptr(request.bytes));
  for (const [name, value] of Object.entries(fields)) request.set(name, value);
  const out = new Uint8Array(128);
  nativeSymbols().mlr_trtllm_sampling_text(ptr(request.bytes), ptr(out), out.length);
  return new TextDecoder().decode(out.subarray(0, out.indexOf(0)));
}

describe("the shim's SamplingConfig", () => {
  test("greedy is topK 1 and nothing else", () => {
    expect(sampling({ temperature: 0 })).toBe("topK=1 topP=unset temperature=unset minP=unset");
  });

  test("sampling with top_k 0 and top_p 1 sets topP 1, so TensorRT-LLM does not fall back to greedy", () => {
    // Its defaults are topK 0 and topP 0, which regularizeTopKTopP turns into topK 1.
    expect(sampling({ temperature: 0.8, top_k: 0, top_p: 1 })).toBe(
      "topK=unset topP=1 temperature=0.8 minP=unset",
    );
    expect(sampling({})).toBe("topK=unset topP=1 temperature=1 minP=unset");
  });

  test("top_k, top_p and min_p pass through when they limit", () => {
    expect(sampling({ temperature: 0.7, top_k: 40, top_p: 0.9, min_p: 0.05 })).toBe(
      "topK=40 topP=0.9 temperature=0.7 minP=0.05",
    );
  });
});

describe("streaming logprobs", () => {
  test("the new tokens' logprobs are the last of the cumulative list", () => {
    const offset = (n: number, tokens: number) =>
      Number(nativeSymbols().mlr_trtllm_logprob_offset(n, tokens));
    expect(offset(5, 1)).toBe(4); // fifth token of a stream: logProbs holds all five
    expect(offset(7, 3)).toBe(4);
    expect(offset(2, 2)).toBe(0); // first response
    expect(offset(0, 0)).toBe(0);
    expect(offset(1, 3)).toBe(0); // fewer than the tokens: from the start, never negative
  });
});
