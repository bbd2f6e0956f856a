/**
 * Compiled constraints of one model, by canonical key: a grammar is compiled once (concurrent identical
 * requests wait for the same compilation) and kept in an LRU bounded by the bytes the native grammars
 * hold (tables and mask caches). Failures are remembered too (a schema refused once is refused again
 * without compiling). The token vocabulary, as bytes, is built on first use.
 */
import { ConstraintGrammar, ConstraintMatcher, ConstraintVocab } from "../engine/constraint-native.ts";
import type { Tokenizer } from "../engine/tokenizer.ts";
import { MultiloraError } from "../errors.ts";
import type { CompilerThread } from "./compiler-thread.ts";
import { type ConstraintSpec, constraintKey } from "./constraint.ts";
import { FAMILY_TEXTS } from "./tool-grammar.ts";

export interface GrammarCacheOptions {
  compileTimeoutMs: number;
  maxBytes: number;
}

const MAX_REMEMBERED_FAILURES = 256;

export class GrammarCache {
  /** The vocabulary for JSON, regex and choice (added tokens excluded), and the one for tool calls. */
  readonly #vocabs = new Map<"text" | "tools", ConstraintVocab>();
  readonly #grammars = new Map<string, ConstraintGrammar>(); // least recently used first
  readonly #compiling = new Map<string, Promise<ConstraintGrammar>>();
  readonly #failures = new Map<string, MultiloraError>();

  constructor(
    readonly tokenizer: Tokenizer,
    readonly compiler: CompilerThread,
    readonly options: GrammarCacheOptions,
  ) {}

  #ensureVocab(kind: "text" | "tools"): ConstraintVocab {
    const known = this.#vocabs.get(kind);
    if (known) return known;
    // Tool calls: the families' call texts may be added tokens, written as one token.
    const allow = kind === "tools" ? new Set(FAMILY_TEXTS) : new Set<string>();
    const tokens = this.tokenizer.constraintTokens(allow);
    if (!tokens) {
      throw new MultiloraError(
        "structured output needs a byte-level tokenizer (tokenizer.json with a ByteLevel decoder); this model's is not",
        { code: "unsupported" },
      );
    }
    const vocab = ConstraintVocab.create(tokens.bytes, tokens.excluded);
    this.#vocabs.set(kind, vocab);
    return vocab;
  }

  /** A matcher at the start of the constraint (the caller frees it; engines copy it at enqueue). */
  async matcher(spec: ConstraintSpec): Promise<ConstraintMatcher> {
    const key = constraintKey(spec);
    const failure = this.#failures.get(key);
    if (failure) throw failure;
    const known = this.#grammars.get(key);
    if (known) {
      this.#grammars.delete(key);
      this.#grammars.set(key, known);
      return ConstraintMatcher.create(known);
    }
    let compiling = this.#compiling.get(key);
    if (!compiling) {
      compiling = this.#compile(key, spec);
      this.#compiling.set(key, compiling);
    }
    const grammar = await compiling;
    // Made at once, before anything can evict the grammar: the matcher holds its own reference.
    return ConstraintMatcher.create(grammar);
  }

  async #compile(key: string, spec: ConstraintSpec): Promise<ConstraintGrammar> {
    try {
      const vocab = this.#ensureVocab(spec.kind === "tool_calls" ? "tools" : "text");
      const program = await this.compiler.compile(spec, this.options.compileTimeoutMs);
      const grammar = ConstraintGrammar.create(vocab, program);
      this.#grammars.set(key, grammar);
      this.#evict(key);
      return grammar;
    } catch (e) {
      if (e instanceof MultiloraError && e.code !== "internal_error" && e.code !== "unsupported") {
        this.#failures.set(key, e);
        if (this.#failures.size > MAX_REMEMBERED_FAILURES)
          this.#failures.delete(this.#failures.keys().next().value as string);
      }
      throw e;
    } finally {
      this.#compiling.delete(key);
    }
  }

  /** Releases least recently used grammars past the byte budget (never `keep`, the one just made). */
  #evict(keep: string): void {
    let total = 0;
    for (const g of this.#grammars.values()) total += g.bytes;
    for (const [key, g] of this.#grammars) {
      if (total <= this.options.maxBytes) break;
      if (key === keep) continue;
      total -= g.bytes;
      this.#grammars.delete(key);
      g.release();
    }
  }

  /** Grammars held and their bytes (for /metrics). */
  stats(): { grammars: number; bytes: number } {
    let bytes = 0;
    for (const g of this.#grammars.values()) bytes += g.bytes;
    return { grammars: this.#grammars.size, bytes };
  }

  close(): void {
    for (const g of this.#grammars.values()) g.release();
    this.#grammars.clear();
    for (const v of this.#vocabs.values()) v.release();
    this.#vocabs.clear();
  }
}
