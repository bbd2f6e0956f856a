/**
 * A small byte-level BPE tokenizer, built in code, for demo and test models: GPT-2's ByteLevel
 * pre-tokenizer and decoder, the 256 byte tokens (ids 0-255, in byte order), merges learned from a short
 * built-in English text, and four special tokens at the end of the vocabulary.
 *
 * The output is a plain `tokenizer.json` object (and a `tokenizer_config.json` object with a ChatML
 * template) that @huggingface/tokenizers and Hugging Face's Rust tokenizers both load. The same options
 * always give the same JSON, byte for byte.
 */
import { MultiloraError } from "../errors.ts";

export const DEMO_SPECIAL_TOKENS = [
  "<|begin_of_text|>",
  "<|end_of_text|>",
  "<|im_start|>",
  "<|im_end|>",
] as const;
export type DemoSpecialToken = (typeof DEMO_SPECIAL_TOKENS)[number];

export const DEMO_DEFAULT_VOCAB_SIZE = 512;

/** ChatML with a leading BOS: `<|begin_of_text|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n`. */
export const DEMO_CHAT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** The text the merges are learned from (written for this purpose; about 3 KB of plain English). */
export const DEMO_TRAINING_TEXT = `The small model reads a line of text and guesses the next word. It is not a clever model, and it does not need to be: it is here so that the server, the tokenizer and the tests have something real to run.

A tokenizer turns text into numbers. This one works on bytes, so every string can be written, even one in a language it has never seen. Common pieces of English, like "the", "ing" and " and", become single tokens after training; rare words are spelled out from smaller parts.

Training is simple. Count every pair of neighbouring pieces in the text, merge the pair that is seen most often into a new piece, and repeat until the vocabulary is full. When two pairs are seen equally often, the one that comes first in string order wins, so the result is the same on every machine.

Once upon a time there was a little robot who lived in a quiet house by the sea. Every morning the robot opened the windows, watered the plants and made tea for the old woman who lived there. She told it stories about the ships that came into the harbour, and the robot listened to every word. One day a storm came in from the west. The wind was strong and the waves were high. The robot closed the windows, lit the lamps and sat with the old woman until the morning. When the sun came out again, they walked down to the water together and counted the boats: there were twelve, then thirteen, then twenty-one.

Questions and answers:
What is two plus two? Two plus two is four.
What colour is the sky? The sky is blue on a clear day and grey when it rains.
Where do the birds go in winter? Many of them fly south, where the days are warmer.
Can you help me write a letter? Yes, of course. Tell me who it is for and what you would like to say.

The server keeps one base model in memory and many small adapters beside it. Each request names the adapter it wants, and the engine applies that adapter's weights while it computes the answer. Requests for different adapters can share the same batch, which keeps the accelerator busy and the answers fast.

Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 32 64 100 128 256 512 1000 2024 3.14 42.
Punctuation: commas, full stops. Questions? Exclamations! "Quotes" and 'single quotes'; colons: and semicolons; brackets (like these) [and these] {and these}.
It's, don't, we're, they've, I'm, you'll, she'd.
`;

// ---------------------------------------------------------------------------------------------------
// GPT-2's byte <-> printable character table and pre-tokenizer

/** GPT-2's `bytes_to_unicode`: each byte as a printable character (space is "Ġ", newline "Ċ"). */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const printable = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const table: string[] = [];
  let next = 0;
  for (let b = 0; b < 256; b++) {
    table.push(String.fromCharCode(printable(b) ? b : 256 + next++));
  }
  return table;
})();

/** GPT-2's pre-tokenizer pattern, as the ByteLevel pre-tokenizer with `use_regex` applies it. */
const GPT2_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

function byteLevelWords(text: string): string[] {
  const encoder = new TextEncoder();
  return (text.match(GPT2_PATTERN) ?? []).map((word) =>
    Array.from(encoder.encode(word), (b) => BYTE_TO_CHAR[b] as string).join(""),
  );
}

// ---------------------------------------------------------------------------------------------------
// A tiny BPE trainer

/**
 * Learns merges from `text` until `tokenCount` merged tokens exist or no adjacent pair is left: repeatedly
 * merges the most frequent adjacent pair (ties: the smaller "left right" string first). Returns the merges
 * and the new tokens in the order they were made.
 */
function trainBpe(text: string, tokenCount: number): { merges: string[]; tokens: string[] } {
  const counts = new Map<string, number>();
  for (const word of byteLevelWords(text)) counts.set(word, (counts.get(word) ?? 0) + 1);
  // Sorted so that nothing depends on the order words were first seen in.
  const words = [...counts.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([word, count]) => ({ symbols: Array.from(word), count }));

  const known = new Set<string>(BYTE_TO_CHAR);
  const merges: string[] = [];
  const tokens: string[] = [];
  while (tokens.length < tokenCount) {
    const pairs = new Map<string, number>();
    for (const { symbols, count } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = `${symbols[i]} ${symbols[i + 1]}`;
        pairs.set(key, (pairs.get(key) ?? 0) + count);
      }
    }
    let best: string | null = null;
    let bestCount = 0;
    for (const [key, count] of pairs) {
      if (count > bestCount || (count === bestCount && best !== null && key < best)) {
        best = key;
        bestCount = count;
      }
    }
    if (best === null) break; // every word is one token: the text has nothing more to teach
    const space = best.indexOf(" ");
    const left = best.slice(0, space);
    const right = best.slice(space + 1);
    const merged = left + right;
    merges.push(best);
    if (!known.has(merged)) {
      known.add(merged);
      tokens.push(merged);
    }
    for (const word of words) {
      const s = word.symbols;
      const out: string[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === left && s[i + 1] === right) {
          out.push(merged);
          i++;
        } else {
          out.push(s[i] as string);
        }
      }
      word.symbols = out;
    }
  }
  return { merges, tokens };
}

// ---------------------------------------------------------------------------------------------------
// tokenizer.json, tokenizer_config.json and generation_config.json objects

export interface DemoTokenizerOptions {
  /**
   * Total number of ids: 256 bytes + merged tokens + 4 special tokens. Default 512. The built-in text
   * gives up to 612 merged tokens (a vocabulary of 872); beyond that, reserved special tokens fill it.
   */
  vocabSize?: number;
  /** The text to learn merges from. Default DEMO_TRAINING_TEXT. */
  text?: string;
}

function checkedVocabSize(options: DemoTokenizerOptions): number {
  const vocabSize = options.vocabSize ?? DEMO_DEFAULT_VOCAB_SIZE;
  const min = 256 + DEMO_SPECIAL_TOKENS.length;
  if (!Number.isInteger(vocabSize) || vocabSize < min) {
    throw new MultiloraError(
      `demo tokenizer: vocabSize must be an integer of at least ${min}, got ${vocabSize}`,
      {
        code: "invalid_demo_tokenizer",
      },
    );
  }
  return vocabSize;
}

/** The ids of the four special tokens for a vocabulary of `vocabSize` (they are its last four ids). */
export function demoSpecialTokenIds(vocabSize = DEMO_DEFAULT_VOCAB_SIZE): Record<DemoSpecialToken, number> {
  const first = checkedVocabSize({ vocabSize }) - DEMO_SPECIAL_TOKENS.length;
  return Object.fromEntries(DEMO_SPECIAL_TOKENS.map((t, i) => [t, first + i])) as Record<
    DemoSpecialToken,
    number
  >;
}

/** The `tokenizer.json` object. `JSON.stringify` it to write the file. */
export function buildDemoTokenizer(options: DemoTokenizerOptions = {}): Record<string, unknown> {
  const vocabSize = checkedVocabSize(options);
  const wanted = vocabSize - 256 - DEMO_SPECIAL_TOKENS.length;
  const { merges, tokens } = trainBpe(options.text ?? DEMO_TRAINING_TEXT, wanted);
  // A vocabulary larger than the text supports is filled, before the four special tokens, with reserved
  // special tokens (as Llama 3's is); like all added tokens they are not in the model's own vocab.
  const reserved = Array.from(
    { length: wanted - tokens.length },
    (_, i) => `<|reserved_special_token_${i}|>`,
  );
  // No prototype: a learned token could be "__proto__".
  const vocab: Record<string, number> = Object.create(null);
  for (const [id, token] of [...BYTE_TO_CHAR, ...tokens].entries()) vocab[token] = id;
  const specialIds = demoSpecialTokenIds(vocabSize);
  const bos = DEMO_SPECIAL_TOKENS[0];
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [
      ...reserved.map((content, i) => ({ id: 256 + tokens.length + i, content })),
      ...DEMO_SPECIAL_TOKENS.map((content) => ({ id: specialIds[content], content })),
    ].map(({ id, content }) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    // Encoding with special tokens puts <|begin_of_text|> first, as Llama 3's tokenizer does.
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: bos, type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: bos, type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { [bos]: { id: bos, ids: [specialIds[bos]], tokens: [bos] } },
    },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

/** The `tokenizer_config.json` object: BOS `<|begin_of_text|>`, EOS `<|im_end|>`, a ChatML template. */
export function demoTokenizerConfig(): Record<string, unknown> {
  return {
    tokenizer_class: "PreTrainedTokenizerFast",
    bos_token: "<|begin_of_text|>",
    eos_token: "<|im_end|>",
    pad_token: "<|end_of_text|>",
    unk_token: null,
    additional_special_tokens: ["<|im_start|>", "<|im_end|>"],
    clean_up_tokenization_spaces: false,
    model_max_length: 2048,
    chat_template: DEMO_CHAT_TEMPLATE,
  };
}

/** The `generation_config.json` object: both `<|end_of_text|>` and `<|im_end|>` end a generation. */
export function demoGenerationConfig(vocabSize = DEMO_DEFAULT_VOCAB_SIZE): Record<string, unknown> {
  const ids = demoSpecialTokenIds(vocabSize);
  return {
    bos_token_id: ids["<|begin_of_text|>"],
    eos_token_id: [ids["<|end_of_text|>"], ids["<|im_end|>"]],
  };
}
