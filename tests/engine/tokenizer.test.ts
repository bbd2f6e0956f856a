import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import {
  BYTE_TO_CHAR,
  buildDemoTokenizer,
  DEMO_SPECIAL_TOKENS,
  demoGenerationConfig,
  demoSpecialTokenIds,
  demoTokenizerConfig,
} from "../../src/engine/demo-tokenizer.ts";
import { rng } from "../../src/engine/random-checkpoint.ts";
import { loadTokenizer, type Tokenizer } from "../../src/engine/tokenizer.ts";
import { MultiloraError } from "../../src/errors.ts";

const FIXTURES = join(import.meta.dir, "../../../shared/fixtures");
const SMOL = join(FIXTURES, "smollm2-360m-instruct-lora-r8");
const QWEN = join(FIXTURES, "qwen2.5-0.5b-instruct-lora-r8");
const HAVE_SMOL = existsSync(SMOL);
if (!HAVE_SMOL) console.warn(`notice: ${SMOL} is absent; the SmolLM2 tokenizer tests are skipped`);

const TEXTS = [
  "Hello world",
  "",
  " ",
  "  leading and trailing spaces  ",
  "line one\nline two\n\n\ttabbed\r\n",
  "héllo wörld, ça va? naïve façade",
  "👋🏽 hi 🇫🇷 👩‍👩‍👧 family 🎉🎉",
  "日本語のテキストと中文文本",
  "مرحبا بالعالم",
  "Привет, мир!",
  "numbers 12345 and 3.14159, 2024-06-01",
  "code: `const x = a[i] + b{j};` // done",
  "\u{1F600}\u{10FFFF}\u00A0\u200B",
];

let tempRoot = "";
function tempDir(name: string): string {
  const dir = join(tempRoot, name);
  mkdirSync(dir, { recursive: true });
  return dir;
}
beforeAll(() => {
  tempRoot = mkdtempSync(join(tmpdir(), "multilora-tokenizer-"));
});
afterAll(() => {
  rmSync(tempRoot, { recursive: true, force: true });
});

function writeJson(dir: string, name: string, value: unknown): void {
  writeFileSync(join(dir, name), JSON.stringify(value));
}

/** Streams `ids` through a fresh decoder: every piece, then flush's text last. */
function stream(tokenizer: Tokenizer, ids: readonly number[], skipSpecialTokens = false): string[] {
  const decoder = tokenizer.createStreamDecoder({ skipSpecialTokens });
  const pieces = ids.map((id) => decoder.push(id));
  pieces.push(decoder.flush());
  return pieces;
}

function expectMultiloraError(fn: () => unknown, ...parts: string[]): MultiloraError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(MultiloraError);
  const error = caught as MultiloraError;
  for (const part of parts) expect(error.message).toContain(part);
  return error;
}

/** Random text: ASCII, Latin-1, CJK, emoji and other code points of every UTF-8 length; no surrogates. */
function randomText(next: () => number, length: number): string {
  const ranges: [number, number][] = [
    [0x20, 0x7e],
    [0x00, 0x1f],
    [0x80, 0x7ff],
    [0x800, 0xd7ff],
    [0xe000, 0xfffd],
    [0x4e00, 0x9fff],
    [0x1f300, 0x1faff],
    [0x10000, 0x10ffff],
  ];
  let text = "";
  for (let i = 0; i < length; i++) {
    const [lo, hi] = ranges[Math.floor(next() * ranges.length)] as [number, number];
    text += String.fromCodePoint(lo + Math.floor(next() * (hi - lo + 1)));
  }
  return text;
}

// ---------------------------------------------------------------------------------------------------

describe.skipIf(!HAVE_SMOL)("SmolLM2's tokenizer.json", () => {
  let tok: Tokenizer;
  let vocab: Record<string, number>;
  beforeAll(() => {
    tok = loadTokenizer(SMOL);
    vocab = JSON.parse(readFileSync(join(SMOL, "tokenizer.json"), "utf8")).model.vocab;
  });

  test("encodes 'Hello world' to the vocabulary's ids for 'Hello' and 'Ġworld'", () => {
    const expected = ["Hello", "Ġworld"].map((token) => vocab[token]);
    expect(expected).toEqual([19556, 905]);
    expect(tok.encode("Hello world", { addSpecialTokens: false })).toEqual(expected as number[]);
    // SmolLM2's tokenizer has no post-processor: special tokens add nothing.
    expect(tok.encode("Hello world")).toEqual(expected as number[]);
    expect(tok.tokenToId("Ġworld")).toBe(905);
    expect(tok.idToToken(19556)).toBe("Hello");
  });

  test("sizes and special tokens", () => {
    expect(tok.vocabSize).toBe(49152);
    expect(tok.eosTokenIds).toEqual([2]);
    expect(tok.tokenToId("<|im_end|>")).toBe(2);
    expect(tok.eosToken).toBe("<|im_end|>");
    expect(tok.bosTokenId).toBe(1);
    expect(tok.bosToken).toBe("<|im_start|>");
    expect(tok.tokenToId("no such token")).toBeUndefined();
  });

  test("round-trips text, emoji and CJK included", () => {
    for (const text of TEXTS) expect(tok.decode(tok.encode(text))).toBe(text);
    expect(tok.encode("")).toEqual([]);
    expect(tok.decode([])).toBe("");
  });

  test("special tokens in text encode to their ids and can be skipped when decoding", () => {
    const ids = tok.encode("<|im_start|>user\nHi<|im_end|>\n");
    expect(ids[0]).toBe(1);
    expect(ids).toContain(2);
    expect(tok.decode(ids)).toBe("<|im_start|>user\nHi<|im_end|>\n");
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe("user\nHi\n");
  });

  test("ids beyond the vocabulary (a padded embedding's rows) decode to nothing", () => {
    expect(tok.decode([...tok.encode("Hi"), 49152, 50000])).toBe("Hi");
  });

  test("the stream decoder's pieces join to the full decode, for every prefix", () => {
    const text = "Hi 👋🏽! 世界 café — ok\n🇫🇷 done";
    const ids = tok.encode(text);
    for (let k = 0; k <= ids.length; k++) {
      const prefix = ids.slice(0, k);
      expect(stream(tok, prefix).join("")).toBe(tok.decode(prefix));
    }
  });

  test("the stream decoder never emits part of a character", () => {
    const text = "👋🏽 世界 🎉";
    const ids = tok.encode(text);
    expect(ids.length).toBeGreaterThan([...text].length); // the emoji take several byte tokens each
    const decoder = tok.createStreamDecoder();
    let soFar = "";
    let held = 0;
    for (const id of ids) {
      const piece = decoder.push(id);
      if (piece === "") held++;
      expect(piece.includes("\uFFFD")).toBe(false);
      expect(piece.isWellFormed()).toBe(true);
      soFar += piece;
      expect(text.startsWith(soFar)).toBe(true);
    }
    expect(held).toBeGreaterThan(0);
    expect(soFar + decoder.flush()).toBe(text);
  });

  test("the stream decoder skips special tokens when asked, and takes context ids", () => {
    const ids = [1, ...tok.encode("assistant\nSure, 5 km is 5000 m."), 2];
    expect(stream(tok, ids, true).join("")).toBe("assistant\nSure, 5 km is 5000 m.");
    expect(stream(tok, ids).join("")).toBe("<|im_start|>assistant\nSure, 5 km is 5000 m.<|im_end|>");

    const context = ids.slice(0, 4);
    const decoder = tok.createStreamDecoder({ contextIds: context });
    const rest = ids.slice(4).map((id) => decoder.push(id));
    expect(rest.join("") + decoder.flush()).toBe(tok.decode(ids).slice(tok.decode(context).length));
  });

  test("a flushed incomplete character shows as U+FFFD", () => {
    const ids = tok.encode("👋");
    expect(ids.length).toBeGreaterThan(1);
    const decoder = tok.createStreamDecoder();
    expect(decoder.push(ids[0] as number)).toBe("");
    expect(decoder.flush()).toBe(tok.decode(ids.slice(0, 1)));
    expect(tok.decode(ids.slice(0, 1)).endsWith("\uFFFD")).toBe(true);
  });
});

describe.skipIf(!existsSync(QWEN))("Qwen2.5's slow-tokenizer folder", () => {
  test("loading says tokenizer.json is missing and names the slow-tokenizer files", () => {
    const error = expectMultiloraError(
      () => loadTokenizer(QWEN),
      join(QWEN, "tokenizer.json"),
      "does not exist",
      "vocab.json, merges.txt",
      "save_pretrained",
    );
    expect(error.code).toBe("tokenizer_not_found");
  });
});

// ---------------------------------------------------------------------------------------------------

describe("the demo tokenizer", () => {
  const VOCAB = 512;
  let json: Record<string, unknown>;
  let dir: string;
  let tok: Tokenizer;
  beforeAll(() => {
    json = buildDemoTokenizer();
    dir = tempDir("demo");
    writeJson(dir, "tokenizer.json", json);
    writeJson(dir, "tokenizer_config.json", demoTokenizerConfig());
    tok = loadTokenizer(dir);
  });

  test("is byte-identical across two builds", () => {
    expect(JSON.stringify(buildDemoTokenizer())).toBe(JSON.stringify(json));
    expect(JSON.stringify(buildDemoTokenizer({ vocabSize: 1024 }))).toBe(
      JSON.stringify(buildDemoTokenizer({ vocabSize: 1024 })),
    );
    expect(readFileSync(join(dir, "tokenizer.json"), "utf8")).toBe(JSON.stringify(buildDemoTokenizer()));
  });

  test("has exactly the requested vocabulary: bytes, merges, then the four special tokens", () => {
    for (const size of [260, 300, VOCAB, 1024]) {
      const built = size === VOCAB ? json : buildDemoTokenizer({ vocabSize: size });
      const model = built.model as { vocab: Record<string, number>; merges: string[] };
      const added = built.added_tokens as { id: number; content: string; special: boolean }[];
      const ids = [...Object.values(model.vocab), ...added.map((t) => t.id)].sort((a, b) => a - b);
      expect(ids).toEqual(Array.from({ length: size }, (_, i) => i));
      expect(added.slice(-4).map((t) => [t.id, t.content])).toEqual(
        DEMO_SPECIAL_TOKENS.map((t, i) => [size - 4 + i, t]),
      );
      expect(added.every((t) => t.special)).toBe(true);
      for (let b = 0; b < 256; b++) expect(model.vocab[BYTE_TO_CHAR[b] as string]).toBe(b);
      // Every merge makes a token of the vocabulary.
      for (const merge of model.merges) expect(model.vocab[merge.replace(" ", "")]).toBeDefined();
    }
    const model = json.model as { vocab: Record<string, number>; merges: string[] };
    expect(model.merges.length).toBe(252);
    expect(model.merges.slice(0, 4)).toEqual(["Ġ t", "h e", "Ġt he", "Ġ a"]);
    expect(Object.entries(model.vocab).find(([, id]) => id === 258)).toEqual(["Ġthe", 258]);
    expect(demoSpecialTokenIds()).toEqual({
      "<|begin_of_text|>": 508,
      "<|end_of_text|>": 509,
      "<|im_start|>": 510,
      "<|im_end|>": 511,
    });
    expect(() => buildDemoTokenizer({ vocabSize: 259 })).toThrow("at least 260");
  });

  test("loads with @huggingface/tokenizers and with loadTokenizer", () => {
    const hf = new HfTokenizer(JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8")), {});
    expect(hf.encode("The robot and the sea", { add_special_tokens: false }).tokens).toEqual([
      "The",
      "Ġrobot",
      "Ġand",
      "Ġthe",
      "Ġse",
      "a",
    ]);
    expect(tok.vocabSize).toBe(VOCAB);
    expect(tok.bosTokenId).toBe(508);
    expect(tok.eosTokenIds).toEqual([511]);
    expect(tok.encode("the robot")).toEqual([508, ...tok.encode("the robot", { addSpecialTokens: false })]);
    expect(tok.encode("<|im_start|>user")).toEqual([
      508,
      510,
      ...tok.encode("user", { addSpecialTokens: false }),
    ]);
  });

  test("round-trips arbitrary text, bytes outside ASCII included", () => {
    for (const text of TEXTS) expect(tok.decode(tok.encode(text, { addSpecialTokens: false }))).toBe(text);
    const next = rng(7);
    for (let i = 0; i < 50; i++) {
      const text = randomText(next, 1 + Math.floor(next() * 40));
      const ids = tok.encode(text, { addSpecialTokens: false });
      expect(tok.decode(ids)).toBe(text);
      expect(tok.decode(tok.encode(text), { skipSpecialTokens: true })).toBe(text);
      expect(stream(tok, ids).join("")).toBe(text);
    }
  });

  test("eos ids come from tokenizer_config, generation_config and config.json", () => {
    const d = tempDir("demo-eos");
    writeJson(d, "tokenizer.json", json);
    writeJson(d, "tokenizer_config.json", demoTokenizerConfig());
    writeJson(d, "generation_config.json", demoGenerationConfig());
    writeJson(d, "config.json", { architectures: ["LlamaForCausalLM"], eos_token_id: 42, bos_token_id: 508 });
    expect(loadTokenizer(d).eosTokenIds).toEqual([511, 509, 42]);
    writeJson(d, "generation_config.json", { eos_token_id: 509 });
    rmSync(join(d, "config.json"));
    expect(loadTokenizer(d).eosTokenIds).toEqual([511, 509]);
    // Without tokenizer_config.json the ids come from the other files alone.
    rmSync(join(d, "tokenizer_config.json"));
    writeJson(d, "config.json", { eos_token_id: [509, 511], bos_token_id: 508 });
    const t = loadTokenizer(d);
    expect(t.eosTokenIds).toEqual([509, 511]);
    expect(t.bosTokenId).toBe(508);
    expect(t.bosToken).toBe("<|begin_of_text|>");
    expect(t.eosToken).toBe("<|end_of_text|>");
  });
});

// ---------------------------------------------------------------------------------------------------

describe("errors", () => {
  test("a folder without tokenizer.json", () => {
    const d = tempDir("empty");
    const error = expectMultiloraError(() => loadTokenizer(d), join(d, "tokenizer.json"), "does not exist");
    expect(error.message).not.toContain("slow-tokenizer");
    expectMultiloraError(() => loadTokenizer(join(d, "nope")), join(d, "nope"), "folder does not exist");
  });

  test("malformed tokenizer.json", () => {
    const d = tempDir("malformed");
    writeFileSync(join(d, "tokenizer.json"), '{"model": {"vocab": ');
    const error = expectMultiloraError(() => loadTokenizer(d), join(d, "tokenizer.json"), "not valid JSON");
    expect(error.code).toBe("invalid_tokenizer");
    writeJson(d, "tokenizer.json", { version: "1.0" });
    expectMultiloraError(() => loadTokenizer(d), join(d, "tokenizer.json"), "model");
    writeJson(d, "tokenizer.json", {
      model: { type: "BPE", vocab: { a: 0 }, merges: [] },
      decoder: { type: "Nope" },
    });
    expectMultiloraError(
      () => loadTokenizer(d),
      join(d, "tokenizer.json"),
      "cannot be loaded by @huggingface/tokenizers",
      "Unknown Decoder type: Nope",
    );
  });

  test("bad tokenizer_config.json and generation_config.json name their files", () => {
    const d = tempDir("bad-configs");
    writeJson(d, "tokenizer.json", buildDemoTokenizer());
    writeJson(d, "tokenizer_config.json", { eos_token: "<|not a token|>" });
    expectMultiloraError(() => loadTokenizer(d), join(d, "tokenizer_config.json"), "<|not a token|>");
    writeJson(d, "tokenizer_config.json", { eos_token: 5 });
    expectMultiloraError(() => loadTokenizer(d), join(d, "tokenizer_config.json"), "eos_token");
    writeJson(d, "tokenizer_config.json", demoTokenizerConfig());
    writeFileSync(join(d, "generation_config.json"), "{oops");
    expectMultiloraError(() => loadTokenizer(d), join(d, "generation_config.json"), "not valid JSON");
    writeJson(d, "generation_config.json", { eos_token_id: [1.5] });
    expectMultiloraError(() => loadTokenizer(d), join(d, "generation_config.json"), "eos_token_id");
  });
});

describe("streaming by table (byte-level vocabularies)", () => {
  /** Random ids over the whole vocabulary: split characters, special tokens and invalid bytes included. */
  function randomIds(next: () => number, vocab: number, n: number): number[] {
    return Array.from({ length: n }, () => Math.floor(next() * vocab));
  }

  function expectSameAsDecode(tok: Tokenizer, seed: number): void {
    const next = rng(seed);
    for (let i = 0; i < 200; i++) {
      const ids = randomIds(next, tok.vocabSize, 1 + Math.floor(next() * 24));
      for (const skip of [false, true]) {
        expect(stream(tok, ids, skip).join("")).toBe(tok.decode(ids, { skipSpecialTokens: skip }));
      }
    }
  }

  test("the demo tokenizer streams by table, with exactly decode's text", () => {
    const dir = tempDir("table-demo");
    writeJson(dir, "tokenizer.json", buildDemoTokenizer());
    writeJson(dir, "tokenizer_config.json", demoTokenizerConfig());
    const tok = loadTokenizer(dir);
    expect(tok.streamsByTable).toBe(true);
    expectSameAsDecode(tok, 11);
  });

  test.skipIf(!HAVE_SMOL)("SmolLM2's tokenizer streams by table, with exactly decode's text", () => {
    const tok = loadTokenizer(SMOL);
    expect(tok.streamsByTable).toBe(true);
    expectSameAsDecode(tok, 12);
  });

  test("any other decoder streams by decoding windows, with the same text", () => {
    const dir = tempDir("table-none");
    const json = buildDemoTokenizer();
    writeJson(dir, "tokenizer.json", { ...json, decoder: { type: "Sequence", decoders: [json.decoder] } });
    writeJson(dir, "tokenizer_config.json", demoTokenizerConfig());
    const tok = loadTokenizer(dir);
    expect(tok.streamsByTable).toBe(false);
    expectSameAsDecode(tok, 13);
  });
});
