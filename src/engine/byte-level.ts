/**
 * Detokenizing byte-level BPE vocabularies (GPT-2's byte-to-unicode alphabet: SmolLM2, Qwen2, Llama 3, the
 * demo model) by table: each token id's bytes, computed once, then a streaming UTF-8 decoder. A streamed
 * token costs a lookup instead of decoding a window of tokens twice.
 *
 * The table is what the tokenizer's own decoder does (@huggingface/tokenizers' ByteLevel decoder maps each
 * character of a token to its byte, a character outside the alphabet to byte 0, and writes added tokens'
 * content as it is), and it is checked against that decoder for every token whose text is whole: any
 * difference and there is no table (the caller keeps decoding windows).
 */

/** GPT-2's `bytes_to_unicode`, reversed: the byte each alphabet character stands for. */
function unicodeToBytes(): Map<string, number> {
  const printable = (from: string, to: string) =>
    Array.from({ length: to.charCodeAt(0) - from.charCodeAt(0) + 1 }, (_, i) => from.charCodeAt(0) + i);
  const bytes = [...printable("!", "~"), ...printable("\xA1", "\xAC"), ...printable("\xAE", "\xFF")];
  const chars = [...bytes];
  for (let b = 0, n = 0; b < 256; b++) {
    if (!bytes.includes(b)) {
      bytes.push(b);
      chars.push(256 + n++);
    }
  }
  return new Map(bytes.map((b, i) => [String.fromCharCode(chars[i] as number), b]));
}

export interface ByteTable {
  /** Each id's bytes; empty for ids without a token. */
  bytes: Uint8Array[];
  /** 1 for special tokens (left out when decoding skips them). */
  special: Uint8Array;
}

export interface TokenSource {
  vocabSize: number;
  /** The vocabulary string of an id (undefined past the vocabulary). */
  idToToken(id: number): string | undefined;
  /** The tokenizer's own decoding of one id. */
  decodeOne(id: number, skipSpecialTokens: boolean): string;
  /** Ids of added tokens (written as their content, not through the byte alphabet). */
  addedIds: ReadonlySet<number>;
}

/** The table of a byte-level vocabulary, or null when the decoder does something else. */
export function byteTable(source: TokenSource): ByteTable | null {
  const alphabet = unicodeToBytes();
  const encoder = new TextEncoder();
  const decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  const bytes: Uint8Array[] = [];
  const special = new Uint8Array(source.vocabSize);
  for (let id = 0; id < source.vocabSize; id++) {
    const token = source.idToToken(id);
    if (token === undefined) {
      bytes.push(new Uint8Array(0));
      continue;
    }
    const whole = source.decodeOne(id, false);
    if (whole.length > 0 && source.decodeOne(id, true).length === 0) special[id] = 1;
    const b = source.addedIds.has(id)
      ? encoder.encode(token)
      : Uint8Array.from(token, (c) => alphabet.get(c) ?? 0);
    // A token that is a whole character sequence must decode to the tokenizer's own text.
    if (!whole.includes("\uFFFD") && decoder.decode(b) !== whole) return null;
    bytes.push(b);
  }
  return { bytes, special };
}
