/**
 * The model's tokenizer: a Hugging Face fast tokenizer (`tokenizer.json`) read with @huggingface/tokenizers,
 * plus what the server needs around it: the end-of-sequence ids (from tokenizer_config.json,
 * generation_config.json and config.json), the BOS id, and an incremental detokenizer for streaming that
 * never cuts a UTF-8 character in two.
 */
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import * as v from "valibot";
import { MultiloraError } from "../errors.ts";
import { parseWith, readJson } from "../formats/json-file.ts";
import { type ByteTable, byteTable } from "./byte-level.ts";

// ---------------------------------------------------------------------------------------------------
// tokenizer_config.json

/** A special token as tokenizer_config.json writes it: a plain string or an AddedToken object. */
const SpecialTokenSchema = v.nullish(v.union([v.string(), v.looseObject({ content: v.string() })]));

const NamedTemplateSchema = v.looseObject({ name: v.string(), template: v.string() });

/** The part of tokenizer_config.json multilora reads; every other key is kept and ignored. */
export const TokenizerConfigSchema = v.looseObject({
  bos_token: SpecialTokenSchema,
  eos_token: SpecialTokenSchema,
  unk_token: SpecialTokenSchema,
  pad_token: SpecialTokenSchema,
  additional_special_tokens: v.nullish(
    v.array(v.union([v.string(), v.looseObject({ content: v.string() })])),
  ),
  clean_up_tokenization_spaces: v.nullish(v.boolean()),
  chat_template: v.nullish(
    v.union([v.string(), v.array(NamedTemplateSchema), v.record(v.string(), v.string())]),
  ),
});
export type TokenizerConfig = v.InferOutput<typeof TokenizerConfigSchema>;

/** The text of a special token entry (`"<s>"` or `{"content": "<s>", ...}`), or null when unset. */
export function specialTokenContent(token: v.InferOutput<typeof SpecialTokenSchema>): string | null {
  if (token === null || token === undefined) return null;
  return typeof token === "string" ? token : token.content;
}

/** Reads `modelDir/tokenizer_config.json`; null when the file is absent. */
export function readTokenizerConfig(modelDir: string): TokenizerConfig | null {
  const path = join(modelDir, "tokenizer_config.json");
  if (!existsSync(path)) return null;
  return parseWith(TokenizerConfigSchema, readJson(path, "invalid_tokenizer"), path, "invalid_tokenizer");
}

// ---------------------------------------------------------------------------------------------------
// generation_config.json and config.json: only the token ids

const TokenIdSchema = v.pipe(v.number(), v.integer(), v.minValue(0));
const TokenIdsSchema = v.nullish(v.union([TokenIdSchema, v.array(TokenIdSchema)]));
const TokenIdsConfigSchema = v.looseObject({ eos_token_id: TokenIdsSchema, bos_token_id: TokenIdsSchema });
type TokenIdsConfig = v.InferOutput<typeof TokenIdsConfigSchema>;

function readTokenIdsConfig(path: string): TokenIdsConfig | null {
  if (!existsSync(path)) return null;
  const value = readJson(path, "invalid_config");
  // A config.json that is not a flat Hugging Face config (a TensorRT-LLM engine's, say) names no ids.
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  return parseWith(TokenIdsConfigSchema, value, path, "invalid_config");
}

function idList(ids: number | readonly number[] | null | undefined): number[] {
  if (ids === null || ids === undefined) return [];
  return typeof ids === "number" ? [ids] : [...ids];
}

// ---------------------------------------------------------------------------------------------------
// tokenizer.json

const NullableObject = v.nullish(v.looseObject({}));

/** Enough of tokenizer.json's shape to give a clear error before @huggingface/tokenizers sees it. */
const TokenizerJsonSchema = v.looseObject({
  model: v.looseObject({ vocab: v.union([v.record(v.string(), v.number()), v.array(v.unknown())]) }),
  added_tokens: v.nullish(
    v.array(v.looseObject({ id: v.pipe(v.number(), v.integer(), v.minValue(0)), content: v.string() })),
  ),
  normalizer: NullableObject,
  pre_tokenizer: NullableObject,
  post_processor: NullableObject,
  decoder: NullableObject,
});

function missingTokenizerMessage(modelDir: string, path: string): string {
  if (!existsSync(modelDir)) return `${modelDir}: the model folder does not exist`;
  if (!statSync(modelDir).isDirectory()) return `${modelDir}: is not a folder (a model folder was expected)`;
  const slow = ["vocab.json", "merges.txt", "tokenizer.model"].filter((f) => existsSync(join(modelDir, f)));
  const found = slow.length > 0 ? ` The folder has only slow-tokenizer files (${slow.join(", ")}).` : "";
  return (
    `${path} does not exist: multilora needs the model's Hugging Face fast tokenizer (tokenizer.json).${found} ` +
    "Copy tokenizer.json from the base model's repository into the folder, or write it once with Python: " +
    "AutoTokenizer.from_pretrained(folder).save_pretrained(folder)."
  );
}

// ---------------------------------------------------------------------------------------------------
// The tokenizer

export interface EncodeOptions {
  /** Let the tokenizer's post-processor add its special tokens (e.g. a BOS). Default true, as in HF. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Leave out special tokens (`<|im_end|>`, ...). Default false, as in HF. */
  skipSpecialTokens?: boolean;
}

export interface StreamDecoderOptions extends DecodeOptions {
  /**
   * Ids that come before the streamed ones (the prompt's last few): decoded for context, never emitted.
   * Decoders such as SentencePiece's Metaspace drop the leading space of a text's first token; with
   * context the first streamed word keeps its space.
   */
  contextIds?: readonly number[];
  /**
   * Special tokens written out even when special tokens are skipped: a tool-call family's tags
   * (`[TOOL_CALLS]`, `<|python_tag|>`), which the tool-call parser must see. Byte-level vocabularies only
   * (the others decode by window, where the tokenizer skips every special token).
   */
  keepIds?: ReadonlySet<number>;
}

/** The stream decoder of a byte-level vocabulary: each id's bytes through one streaming UTF-8 decoder. */
function tableStreamDecoder(
  table: ByteTable,
  skipSpecialTokens: boolean,
  keepIds?: ReadonlySet<number>,
): StreamDecoder {
  const utf8 = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  const none = new Uint8Array(0);
  return {
    push: (id) => {
      const skip = skipSpecialTokens && table.special[id] === 1 && !keepIds?.has(id);
      return utf8.decode(skip ? none : (table.bytes[id] ?? none), { stream: true });
    },
    flush: () => utf8.decode(),
  };
}

/** Turns generated ids into text one id at a time. */
export interface StreamDecoder {
  /** Adds one id; returns the text completed by it (often "", e.g. while a UTF-8 character is split). */
  push(id: number): string;
  /** Returns whatever text is still held back (an incomplete character shows as U+FFFD). */
  flush(): string;
}

export class Tokenizer {
  /** The tokenizer.json this tokenizer was read from. */
  readonly path: string;
  /** Number of token ids (highest id + 1), added tokens included; a model's embedding may be larger. */
  readonly vocabSize: number;
  /** Ids that end a generation: tokenizer_config's eos_token, generation_config's and config's eos_token_id. */
  readonly eosTokenIds: readonly number[];
  readonly bosTokenId: number | null;
  /** The BOS and EOS texts, as chat templates expect them in `bos_token` and `eos_token`. */
  readonly bosToken: string | null;
  readonly eosToken: string | null;

  readonly #hf: HfTokenizer;
  readonly #cleanUpSpaces: boolean;
  /** Each id's bytes, where the vocabulary is byte-level: streaming is then a lookup per token. */
  #bytes: ByteTable | null | undefined;
  readonly #byteLevel: { addedIds: ReadonlySet<number> } | null;

  constructor(
    hf: HfTokenizer,
    path: string,
    vocabSize: number,
    special: { eosTokenIds: readonly number[]; bosTokenId: number | null; cleanUpSpaces: boolean },
    byteLevel: { addedIds: ReadonlySet<number> } | null = null,
  ) {
    this.#hf = hf;
    this.path = path;
    this.vocabSize = vocabSize;
    this.eosTokenIds = Object.freeze([...special.eosTokenIds]);
    this.bosTokenId = special.bosTokenId;
    this.bosToken = special.bosTokenId === null ? null : (hf.id_to_token(special.bosTokenId) ?? null);
    const firstEos = special.eosTokenIds[0];
    this.eosToken = firstEos === undefined ? null : (hf.id_to_token(firstEos) ?? null);
    this.#cleanUpSpaces = special.cleanUpSpaces;
    this.#byteLevel = special.cleanUpSpaces ? null : byteLevel;
  }

  /** The byte table, built on first use (a vocabulary's worth of single-token decodes); null if none. */
  #table(): ByteTable | null {
    if (this.#bytes === undefined) {
      const byteLevel = this.#byteLevel;
      this.#bytes = byteLevel
        ? byteTable({
            vocabSize: this.vocabSize,
            idToToken: (id) => this.#hf.id_to_token(id),
            decodeOne: (id, skip) => this.decode([id], { skipSpecialTokens: skip }),
            addedIds: byteLevel.addedIds,
          })
        : null;
    }
    return this.#bytes;
  }

  /**
   * Each token's bytes, and the tokens an output constraint never allows: end ids, special tokens, and
   * added tokens (they are not text inside JSON), except those whose content is in `allow` (a tool-call
   * family's `<tool_call>`, `[TOOL_CALLS]`: there the model writes them as one token). Null where the
   * vocabulary is not byte-level.
   */
  constraintTokens(
    allow: ReadonlySet<string> = new Set(),
  ): { bytes: readonly Uint8Array[]; excluded: Uint8Array } | null {
    const table = this.#table();
    if (!table || !this.#byteLevel) return null;
    const excluded = new Uint8Array(table.bytes.length);
    const decoder = new TextDecoder();
    table.bytes.forEach((b, id) => {
      if (b.length === 0) excluded[id] = 1;
      else if ((table.special[id] || this.#byteLevel?.addedIds.has(id)) && !allow.has(decoder.decode(b)))
        excluded[id] = 1;
    });
    for (const id of this.eosTokenIds) if (id < excluded.length) excluded[id] = 1;
    return { bytes: table.bytes, excluded };
  }

  /** Whether streamed tokens are detokenized by table (a byte-level vocabulary). */
  get streamsByTable(): boolean {
    return this.#table() !== null;
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    return this.#hf.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
  }

  /** Ids without a token (rows of a padded embedding beyond the vocabulary) decode to nothing. */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    const known = ids.filter((id) => this.#hf.id_to_token(id) !== undefined);
    if (known.length === 0) return "";
    return this.#hf.decode(known, {
      skip_special_tokens: options.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: this.#cleanUpSpaces,
    });
  }

  /**
   * An incremental detokenizer: the texts `push` and `flush` return, joined, equal `decode(ids)`.
   *
   * It decodes a short window of recent ids twice, with and without the newest ones, and emits the
   * difference once it does not end in U+FFFD (the mark of a UTF-8 character still missing bytes), or
   * once 4 tokens have not completed one (then the bytes are invalid and U+FFFD is the text).
   */
  createStreamDecoder(options: StreamDecoderOptions = {}): StreamDecoder {
    const table = this.#table();
    if (table) return tableStreamDecoder(table, options.skipSpecialTokens ?? false, options.keepIds);
    const decodeOptions: DecodeOptions = { skipSpecialTokens: options.skipSpecialTokens ?? false };
    const ids: number[] = [...(options.contextIds ?? [])];
    // ids[prefixOffset, readOffset) were emitted already and give the window its context.
    let prefixOffset = 0;
    let readOffset = ids.length;
    const pending = (final: boolean): string => {
      const prefixText = this.decode(ids.slice(prefixOffset, readOffset), decodeOptions);
      const fullText = this.decode(ids.slice(prefixOffset), decodeOptions);
      if (fullText.length <= prefixText.length) return "";
      // A UTF-8 character spans at most 4 bytes: past 4 held tokens the U+FFFD is real (invalid bytes),
      // and holding on would stall the stream and grow the window without end.
      if (!final && fullText.endsWith("\uFFFD") && ids.length - readOffset < 4) return "";
      prefixOffset = readOffset;
      readOffset = ids.length;
      return fullText.slice(prefixText.length);
    };
    return {
      push: (id) => {
        ids.push(id);
        return pending(false);
      },
      flush: () => {
        const text = pending(true);
        prefixOffset = readOffset = ids.length;
        return text;
      },
    };
  }

  /** The id of a token given as its vocabulary string (`"<|im_end|>"`, `"Ġworld"`). */
  tokenToId(token: string): number | undefined {
    return this.#hf.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.#hf.id_to_token(id);
  }
}

/**
 * Loads the tokenizer of the model folder `modelDir`: `tokenizer.json` (required), `tokenizer_config.json`,
 * `generation_config.json` and `config.json` (each optional).
 */
export function loadTokenizer(modelDir: string): Tokenizer {
  const path = join(modelDir, "tokenizer.json");
  if (!existsSync(path)) {
    throw new MultiloraError(missingTokenizerMessage(modelDir, path), { code: "tokenizer_not_found" });
  }
  const json = parseWith(TokenizerJsonSchema, readJson(path, "invalid_tokenizer"), path, "invalid_tokenizer");
  const config = readTokenizerConfig(modelDir);
  const configPath = join(modelDir, "tokenizer_config.json");

  // @huggingface/tokenizers wants every component key present and special tokens as strings.
  const tokenizerJson = {
    ...json,
    added_tokens: json.added_tokens ?? [],
    normalizer: json.normalizer ?? null,
    pre_tokenizer: json.pre_tokenizer ?? null,
    post_processor: json.post_processor ?? null,
    decoder: json.decoder ?? null,
  };
  const hfConfig = {
    ...config,
    bos_token: specialTokenContent(config?.bos_token) ?? undefined,
    eos_token: specialTokenContent(config?.eos_token) ?? undefined,
    unk_token: specialTokenContent(config?.unk_token) ?? undefined,
    pad_token: specialTokenContent(config?.pad_token) ?? undefined,
    additional_special_tokens: (config?.additional_special_tokens ?? [])
      .map((t) => specialTokenContent(t))
      .filter((t) => t !== null),
  };
  let hf: HfTokenizer;
  try {
    hf = new HfTokenizer(tokenizerJson, hfConfig);
  } catch (e) {
    throw new MultiloraError(
      `${path}: cannot be loaded by @huggingface/tokenizers (${(e as Error).message ?? String(e)})`,
      { code: "invalid_tokenizer", cause: e },
    );
  }
  const vocabSize = hf.model?.vocab.length ?? 0;
  if (vocabSize === 0)
    throw new MultiloraError(`${path}: the vocabulary is empty`, { code: "invalid_tokenizer" });

  const idOf = (token: string | null, field: string): number | null => {
    if (token === null) return null;
    const id = hf.token_to_id(token);
    if (id === undefined) {
      throw new MultiloraError(`${configPath}: ${field} ${JSON.stringify(token)} is not a token of ${path}`, {
        code: "invalid_tokenizer",
      });
    }
    return id;
  };
  const generation = readTokenIdsConfig(join(modelDir, "generation_config.json"));
  const model = readTokenIdsConfig(join(modelDir, "config.json"));

  const eos = new Set<number>();
  const configEos = idOf(specialTokenContent(config?.eos_token), "eos_token");
  if (configEos !== null) eos.add(configEos);
  for (const id of idList(generation?.eos_token_id)) eos.add(id);
  for (const id of idList(model?.eos_token_id)) eos.add(id);

  const bosTokenId =
    idOf(specialTokenContent(config?.bos_token), "bos_token") ??
    idList(generation?.bos_token_id)[0] ??
    idList(model?.bos_token_id)[0] ??
    null;

  const decoderType = (json.decoder as { type?: unknown } | null | undefined)?.type;
  return new Tokenizer(
    hf,
    path,
    vocabSize,
    {
      eosTokenIds: [...eos],
      bosTokenId,
      // Off unless the config asks: cleaning up spaces changes text and breaks streaming's concatenation.
      cleanUpSpaces: config?.clean_up_tokenization_spaces ?? false,
    },
    decoderType === "ByteLevel" ? { addedIds: new Set((json.added_tokens ?? []).map((t) => t.id)) } : null,
  );
}
