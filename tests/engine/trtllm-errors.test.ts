/**
 * mlr_trtllm_error_status (ffi/common/trtllm_errors.c) over the exact texts TensorRT-LLM's executor puts
 * in a failed Response (see ffi/trtllm/README.md for the files and blobs they come from). Each text is
 * given with concrete ids, and once more wrapped the way TLLM_CHECK_WITH_INFO's exception reports it.
 */

import { ptr } from "bun:ffi";
import { describe, expect, test } from "bun:test";
import { MLR_STATUS, nativeSymbols } from "../../src/engine/native.ts";

function status(text: string): number {
  const bytes = Buffer.from(`${text}\0`, "utf8");
  return nativeSymbols().mlr_trtllm_error_status(ptr(bytes));
}

/** How a TLLM_CHECK_WITH_INFO failure reads once the executor has caught it. */
function asAssertion(text: string): string {
  return `[TensorRT-LLM][ERROR] Assertion failed: ${text} (/src/tensorrt_llm/cpp/tensorrt_llm/runtime/loraUtils.cpp:92)\n1  0x7f0 tensorrt_llm::common::throwRuntimeError(char const*, int, std::string const&) + 100`;
}

const CASES: [string, number][] = [
  ["LoRA task 42 not found in cache. Please send LoRA weights with request", MLR_STATUS.LORA_NOT_CACHED],
  ["LoRA task 18446744073709551615 not found in cache. Please send LoRA weights with request", 2],
  ["PEFT Cache is full. Could not store taskId=7", MLR_STATUS.LORA_CACHE_FULL],
  ["Cache is full. There are no done tasks to evict", 3],
  ["lora_task_id must be set for LoRA inference", MLR_STATUS.LORA_INVALID],
  ["Request for LoRA inference must have both lora_weights and lora_keys", 4],
  ["Invalid shape for lora_weights tensor", 4],
  ["Invalid shape for lora_keys tensor", 4],
  ["Expected batch dimension to be 1 for each lora request", 4],
  ["Expected lora weights to be in CPU memory", 4],
  ["Expected  lora keys to have TYPE_INT32 but was FLOAT", 4],
  ["Expected dim1 lora_weights and lora_keys to have the same size", 4],
  ["Expected dim2 of lora_keys to have a size in [3, 4]", 4],
  ["Expected lora weights to be the same data type as base model", 4],
  ["Expected layerId to be in the range [0, numModelLayers)", 4],
  ["Expected adapterSize to be > 0", 4],
  ["lora module attn_q not enabled for this model", 4],
  ["lora_weights has to few values for mlp_4h_to_h", 4],
  ["Invalid low_rank (128). low_rank must be smaller than mMaxLowRank (64)", 4],
  ["Unsupported LoRA weights dtype FLOAT for PEFT cache; expected model dtype BF16", 4],
  ["PEFT cache supports one homogeneous LoRA dtype; cache is BF16 but received HALF", 4],
];

describe("mlr_trtllm_error_status", () => {
  test("the status values are the header's", () => {
    expect(MLR_STATUS.LORA_NOT_CACHED).toBe(2);
    expect(MLR_STATUS.LORA_CACHE_FULL).toBe(3);
    expect(MLR_STATUS.LORA_INVALID).toBe(4);
    expect(MLR_STATUS.INTERNAL).toBe(7);
  });

  for (const [text, code] of CASES) {
    test(`maps "${text}" to ${code}`, () => {
      expect(status(text)).toBe(code);
    });
    test(`maps "${text}" to ${code} inside an assertion report`, () => {
      expect(status(asAssertion(text))).toBe(code);
    });
  }

  test("a cache error wrapped by the PEFT cache's put is still a cache error", () => {
    expect(
      status("Caught Exception while storing peft weights -- PEFT Cache is full. Could not store taskId=9"),
    ).toBe(3);
  });

  test("unrelated texts, empty text and NULL are INTERNAL", () => {
    expect(status("Encountered an error in forwardAsync function: CUDA error: out of memory")).toBe(7);
    expect(status("task 5 not found in cache call put first")).toBe(7);
    expect(status("LoRA task 5 not found")).toBe(7);
    expect(status("")).toBe(7);
    expect(nativeSymbols().mlr_trtllm_error_status(null)).toBe(7);
  });
});
