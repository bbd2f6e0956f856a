/**
 * Feeding a text through a constraint token by token, as a generation would: the text is tokenized, each
 * token must be in the mask of allowed tokens at its position, and the constraint must be complete at
 * the end. What `multilora grammar check`, the JSON Schema Test Suite test and bench/structured.ts do.
 */
import { type ConstraintGrammar, ConstraintMatcher } from "../engine/constraint-native.ts";
import type { Tokenizer } from "../engine/tokenizer.ts";

export interface InstanceResult {
  accepted: boolean;
  /** The index of the first token the mask refused (the token count when only the end was refused). */
  rejectedAt?: number;
  /** That token's text ("" for the end). */
  rejectedText?: string;
  tokens: number;
  /** Microseconds of each mask computed (one per token, and one for the end). */
  maskUs: number[];
}

export function checkInstance(
  grammar: ConstraintGrammar,
  tokenizer: Tokenizer,
  text: string,
): InstanceResult {
  const ids = tokenizer.encode(text, { addSpecialTokens: false });
  const matcher = ConstraintMatcher.create(grammar);
  const mask = new Uint32Array(Math.ceil(tokenizer.vocabSize / 32));
  const maskUs: number[] = [];
  const fill = (): boolean => {
    const t0 = performance.now();
    const complete = matcher.fillMask(mask);
    maskUs.push(Math.round((performance.now() - t0) * 1000 * 10) / 10);
    return complete;
  };
  try {
    for (let k = 0; k < ids.length; k++) {
      fill();
      const id = ids[k] as number;
      const allowed = ((mask[id >>> 5] as number) >>> (id & 31)) & 1;
      if (!allowed || !matcher.accept(id)) {
        return {
          accepted: false,
          rejectedAt: k,
          rejectedText: tokenizer.decode([id]),
          tokens: ids.length,
          maskUs,
        };
      }
    }
    if (!fill())
      return { accepted: false, rejectedAt: ids.length, rejectedText: "", tokens: ids.length, maskUs };
    return { accepted: true, tokens: ids.length, maskUs };
  } finally {
    matcher.free();
  }
}
