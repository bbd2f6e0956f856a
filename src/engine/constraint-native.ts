/**
 * The native output constraints (ffi/include/multilora.h, "Output constraints"; ffi/common/constraint_*.c):
 * a vocabulary as bytes, a compiled program checked and prepared over it, and matchers that say which
 * tokens may come next. Usable without an engine (the `multilora grammar` command runs them standalone); an
 * engine request takes a matcher as `GenerateRequest.constraint` and copies it.
 *
 * Native memory is explicit: `release()` (vocabulary, grammar) and `free()` (matcher) give it back; a
 * FinalizationRegistry is only the backstop for objects dropped without. The C side counts references (a
 * grammar keeps its vocabulary, a matcher its grammar), so releasing in any order is safe.
 */
import { type Pointer, ptr } from "bun:ffi";
import { EngineError } from "./engine.ts";
import { ErrorBuffer, MLR_STATUS, type NativeSymbols, nativeSymbols, statusName } from "./native.ts";

/** The program format's constants (multilora.h). */
export const MLR_CONSTRAINT = { MAGIC: 0x47524c4d, VERSION: 1, MAX_DEPTH: 256 } as const;

/** Bits of mlr_matcher_state. */
const COMPLETE = 1;
const CAN_CONTINUE = 2;

const backstop = new FinalizationRegistry<() => void>((release) => release());

/** A handle owned by one object: given back once, by release() or by the registry. */
class NativeHandle {
  private handle: Pointer | null;

  constructor(
    owner: object,
    handle: Pointer,
    private readonly releaseFn: (p: Pointer) => void,
    private readonly what: string,
  ) {
    this.handle = handle;
    backstop.register(owner, () => releaseFn(handle), this);
  }

  get pointer(): Pointer {
    if (this.handle === null) throw new Error(`the ${this.what} was already released`);
    return this.handle;
  }

  get live(): boolean {
    return this.handle !== null;
  }

  release(): void {
    if (this.handle === null) return;
    backstop.unregister(this);
    this.releaseFn(this.handle);
    this.handle = null;
  }
}

function created(out: BigUint64Array): Pointer {
  return Number(out[0]) as Pointer;
}

/** A tokenizer's tokens as bytes, and the trie every mask walks. */
export class ConstraintVocab {
  private readonly native: NativeHandle;

  private constructor(
    readonly lib: NativeSymbols,
    handle: Pointer,
    /** Token ids: [0, size). */
    readonly size: number,
  ) {
    this.native = new NativeHandle(this, handle, (p) => lib.mlr_vocab_release(p), "vocabulary");
  }

  /**
   * Token i's bytes are tokens[i]; excluded[i] = 1 marks a token never allowed inside a constraint (special
   * and added tokens, end ids). Tokens with no bytes are never allowed either. `lib`: the library whose
   * engine will take the matchers (the CPU engine's by default).
   */
  static create(
    tokens: readonly Uint8Array[],
    excluded: Uint8Array,
    lib: NativeSymbols = nativeSymbols(),
  ): ConstraintVocab {
    if (excluded.length !== tokens.length)
      throw new Error(`excluded has ${excluded.length} flags for ${tokens.length} tokens`);
    const offsets = new BigInt64Array(tokens.length + 1);
    let total = 0;
    for (let i = 0; i < tokens.length; i++) {
      total += (tokens[i] as Uint8Array).length;
      offsets[i + 1] = BigInt(total);
    }
    const bytes = new Uint8Array(Math.max(total, 1)); // (ptr() of an empty buffer is refused)
    let at = 0;
    for (const t of tokens) {
      bytes.set(t, at);
      at += t.length;
    }
    const flags = excluded.length > 0 ? excluded : new Uint8Array(1);
    const out = new BigUint64Array(1);
    const err = new ErrorBuffer();
    const status = lib.mlr_vocab_create(
      ptr(bytes),
      ptr(offsets),
      tokens.length,
      ptr(flags),
      ptr(out),
      err.ptr,
      err.bytes.length,
    );
    if (status !== MLR_STATUS.OK) throw new EngineError(statusName(status), err.text);
    return new ConstraintVocab(lib, created(out), tokens.length);
  }

  get pointer(): Pointer {
    return this.native.pointer;
  }

  /** Words of a mask over this vocabulary. */
  get maskWords(): number {
    return Math.ceil(this.size / 32);
  }

  /** Drops this object's reference (grammars built over it keep theirs). */
  release(): void {
    this.native.release();
  }
}

/** A program (src/structured's output) checked and prepared over a vocabulary. */
export class ConstraintGrammar {
  private readonly native: NativeHandle;

  private constructor(
    readonly vocab: ConstraintVocab,
    handle: Pointer,
  ) {
    const lib = vocab.lib;
    this.native = new NativeHandle(this, handle, (p) => lib.mlr_grammar_release(p), "grammar");
  }

  /** Throws an EngineError (INVALID_ARGUMENT with the program's first problem, or OUT_OF_MEMORY). */
  static create(vocab: ConstraintVocab, program: Int32Array): ConstraintGrammar {
    const out = new BigUint64Array(1);
    const err = new ErrorBuffer();
    const words = program.length > 0 ? program : new Int32Array(1);
    const status = vocab.lib.mlr_grammar_create(
      vocab.pointer,
      ptr(words),
      program.length,
      ptr(out),
      err.ptr,
      err.bytes.length,
    );
    if (status !== MLR_STATUS.OK)
      throw new EngineError(statusName(status), `the constraint program is not valid: ${err.text}`);
    return new ConstraintGrammar(vocab, created(out));
  }

  get pointer(): Pointer {
    return this.native.pointer;
  }

  /** Native bytes the grammar holds now: its tables and its mask cache (which grows as masks are made). */
  get bytes(): number {
    return Number(this.vocab.lib.mlr_grammar_bytes(this.native.pointer));
  }

  /** Drops this object's reference (matchers over it keep theirs). */
  release(): void {
    this.native.release();
  }
}

/** One sequence's position in a grammar's language. One thread at a time. */
export class ConstraintMatcher {
  private readonly native: NativeHandle;
  private readonly completeOut = new Int32Array(1);

  private constructor(
    readonly grammar: ConstraintGrammar,
    handle: Pointer,
  ) {
    const lib = grammar.vocab.lib;
    this.native = new NativeHandle(this, handle, (p) => lib.mlr_matcher_free(p), "matcher");
  }

  /** A matcher at the start of the grammar's language. */
  static create(grammar: ConstraintGrammar): ConstraintMatcher {
    const out = new BigUint64Array(1);
    const err = new ErrorBuffer();
    const status = grammar.vocab.lib.mlr_matcher_create(grammar.pointer, ptr(out), err.ptr, err.bytes.length);
    if (status !== MLR_STATUS.OK) throw new EngineError(statusName(status), err.text);
    return new ConstraintMatcher(grammar, created(out));
  }

  /** An independent copy at the same position. */
  clone(): ConstraintMatcher {
    const out = new BigUint64Array(1);
    const err = new ErrorBuffer();
    const status = this.lib.mlr_matcher_clone(this.native.pointer, ptr(out), err.ptr, err.bytes.length);
    if (status !== MLR_STATUS.OK) throw new EngineError(statusName(status), err.text);
    return new ConstraintMatcher(this.grammar, created(out));
  }

  /** The handle an engine request carries (mlr_request.constraint). */
  get pointer(): Pointer {
    return this.native.pointer;
  }

  /** Words a mask needs: ceil(vocabulary size / 32). */
  get maskWords(): number {
    return this.grammar.vocab.maskWords;
  }

  /**
   * Writes the tokens allowed next into out (bit id % 32 of out[id / 32]; everything else cleared; at least
   * maskWords words) and returns whether the text so far is complete (the sequence may end here).
   */
  fillMask(out: Uint32Array): boolean {
    if (out.length < this.maskWords)
      throw new Error(
        `a mask over ${this.grammar.vocab.size} tokens needs ${this.maskWords} words, not ${out.length}`,
      );
    const status = this.lib.mlr_matcher_fill_mask(
      this.native.pointer,
      ptr(out),
      out.length,
      ptr(this.completeOut),
    );
    if (status !== MLR_STATUS.OK)
      throw new EngineError(
        statusName(status),
        "the constraint's mask could not be computed (out of memory)",
      );
    return this.completeOut[0] === 1;
  }

  /** Accepts one token: true, or false (not allowed here; the matcher is unchanged). */
  accept(token: number): boolean {
    const status = this.lib.mlr_matcher_accept(this.native.pointer, token);
    if (status === MLR_STATUS.OK) return true;
    if (status === MLR_STATUS.INVALID_ARGUMENT) return false;
    throw new EngineError(statusName(status), "the constraint could not accept the token (out of memory)");
  }

  /** The text so far is in the language. */
  get complete(): boolean {
    return (this.lib.mlr_matcher_state(this.native.pointer) & COMPLETE) !== 0;
  }

  /** Some byte may follow the text so far. */
  get canContinue(): boolean {
    return (this.lib.mlr_matcher_state(this.native.pointer) & CAN_CONTINUE) !== 0;
  }

  free(): void {
    this.native.release();
  }

  private get lib(): NativeSymbols {
    return this.grammar.vocab.lib;
  }
}
