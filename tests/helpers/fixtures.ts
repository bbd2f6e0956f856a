/**
 * The real model and adapter files in ../shared/fixtures (beside the project's root). Tests that use them
 * skip, with a notice, when the folder is absent: the project must work without it.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";

export const FIXTURES = join(import.meta.dir, "../../../shared/fixtures");
export const HAVE_FIXTURES = existsSync(FIXTURES);

if (!HAVE_FIXTURES) {
  console.warn(`notice: ${FIXTURES} is absent; the tests on real fixture files are skipped`);
}

/** SmolLM2-360M-Instruct's dimensions (fixtures/README.md). */
export const SMOLLM2_360M = {
  hidden: 960,
  intermediate: 2560,
  layers: 32,
  heads: 15,
  kvHeads: 5,
  headDim: 64,
};
/** Qwen2.5-0.5B-Instruct's dimensions (fixtures/README.md). */
export const QWEN25_05B = { hidden: 896, intermediate: 4864, layers: 24, heads: 14, kvHeads: 2, headDim: 64 };
