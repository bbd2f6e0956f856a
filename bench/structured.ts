/**
 * Structured output benchmark, every figure measured in this run:
 *
 *   (1) Over the JSON Schema Test Suite's compilable schemas (../shared/fixtures), with SmolLM2's
 *       49,152-token vocabulary, one thread: compile time (JSON Schema to program, and the native grammar)
 *       p50 / p99, and the time of each token mask p50 / p99 / max, feeding every test instance (as
 *       Python's json.dumps writes it) token by token. Targets: mask p50 <= 50 us, p99 <= 1 ms; compile
 *       p50 <= 5 ms.
 *   (2) Decode tokens/s of a batch of 16 sequences constrained by a JSON Schema against the same batch
 *       unconstrained, on the SmolLM2-360M-shaped random model (`constrained_ratio`, target >= 0.9).
 *
 *   bun bench/structured.ts [--threads N] [--tokens N]
 *
 * Last line: {"bench":"structured","schemas":N,"compile_p50_ms","compile_p99_ms","mask_p50_us",
 * "mask_p99_us","mask_max_us","constrained_ratio"}
 */
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { checkSchema, openVocabulary } from "../src/commands/grammar.ts";
import { loadCheckpoint } from "../src/engine/checkpoint.ts";
import { ConstraintGrammar, ConstraintMatcher, ConstraintVocab } from "../src/engine/constraint-native.ts";
import { CpuEngine } from "../src/engine/cpu-engine.ts";
import { loadTokenizer } from "../src/engine/tokenizer.ts";
import { compileConstraint } from "../src/structured/constraint.ts";
import { pythonDumps } from "../src/structured/python-json.ts";
import { decodeRate, writeSmolShapedModel } from "./shapes.ts";

const { values } = parseArgs({
  options: { threads: { type: "string" }, tokens: { type: "string", default: "24" } },
});
const threads = values.threads ? Number(values.threads) : availableParallelism();
const decodeTokens = Number(values.tokens);

const FIXTURES = join(import.meta.dir, "../../shared/fixtures");
const SUITE = join(FIXTURES, "json-schema-test-suite/tests/draft2020-12");
const SMOL = join(FIXTURES, "smollm2-360m-instruct-lora-r8");

const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : (s[Math.min(s.length - 1, Math.floor(q * s.length))] as number);
};
const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;

/** (1) compile and mask times over the suite. */
function suiteTimes(): { schemas: number; compile: number[]; mask: number[] } | null {
  if (!existsSync(SUITE) || !existsSync(SMOL)) {
    console.log(`(1) skipped: ${SUITE} or ${SMOL} is absent (../shared/fixtures)`);
    return null;
  }
  const { tokenizer, vocab } = openVocabulary(SMOL);
  const compile: number[] = [];
  const mask: number[] = [];
  let schemas = 0;
  try {
    for (const file of readdirSync(SUITE).filter((f) => f.endsWith(".json"))) {
      for (const group of JSON.parse(readFileSync(join(SUITE, file), "utf8")) as {
        schema: unknown;
        tests: { data: unknown }[];
      }[]) {
        const texts = group.tests.map((t) => pythonDumps(JSON.stringify(t.data)));
        const report = checkSchema(vocab, tokenizer, group.schema, texts, 5000);
        if (!report.compiled) continue;
        schemas++;
        compile.push(report.compileUs / 1000);
        for (const t of report.tests) mask.push(...t.maskUs);
      }
    }
  } finally {
    vocab.release();
  }
  console.log(
    `(1) ${schemas} compilable schemas, ${mask.length} masks over the 49,152-token vocabulary: compile p50 ${round(quantile(compile, 0.5), 2)} ms, p99 ${round(quantile(compile, 0.99), 2)} ms; mask p50 ${quantile(mask, 0.5)} µs, p99 ${quantile(mask, 0.99)} µs, max ${quantile(mask, 1)} µs`,
  );
  return { schemas, compile, mask };
}

/** (2) batch-16 decode, constrained against free. */
async function constrainedRatio(): Promise<number> {
  const work = mkdtempSync(join(tmpdir(), "multilora-bench-structured-"));
  try {
    writeSmolShapedModel(work);
    if (existsSync(SMOL)) {
      for (const f of ["tokenizer.json", "tokenizer_config.json"]) cpSync(join(SMOL, f), join(work, f));
    }
    const tokenizer = loadTokenizer(work);
    const tokens = tokenizer.constraintTokens();
    if (!tokens) throw new Error("the benchmark model's tokenizer is not byte-level");
    const vocab = ConstraintVocab.create(tokens.bytes, tokens.excluded);
    // Strings the random model goes on writing: every sequence runs all its tokens.
    const schema = {
      type: "object",
      properties: { notes: { type: "array", items: { type: "string" } } },
      required: ["notes"],
    };
    const grammar = ConstraintGrammar.create(vocab, compileConstraint({ kind: "json_schema", schema }, 5000));
    const engine = CpuEngine.create(loadCheckpoint(work), { threads, maxBatch: 16 });
    const prompt = Int32Array.from(tokenizer.encode("Write JSON notes:", { addSpecialTokens: false }));
    const batch = (constrained: boolean) => {
      const matcher = constrained ? ConstraintMatcher.create(grammar) : null;
      const handles = Array.from({ length: 16 }, (_, i) =>
        engine.enqueue({
          prompt,
          maxNewTokens: decodeTokens,
          temperature: 1,
          seed: BigInt(i),
          constraint: matcher,
        }),
      );
      matcher?.free(); // the engine copied it for each request
      return decodeRate(handles);
    };
    await batch(true); // warm the mask caches and the engine
    const free: number[] = [];
    const constrained: number[] = [];
    for (let r = 0; r < 2; r++) {
      free.push(await batch(false));
      constrained.push(await batch(true));
    }
    await engine.close();
    grammar.release();
    vocab.release();
    const ratio = Math.max(...constrained) / Math.max(...free);
    console.log(
      `(2) batch 16, ${decodeTokens} tokens each: free ${round(Math.max(...free))} tok/s, constrained ${round(Math.max(...constrained))} tok/s (ratio ${round(ratio, 3)})`,
    );
    return ratio;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

const suite = suiteTimes();
const ratio = await constrainedRatio();
console.log(
  JSON.stringify({
    bench: "structured",
    schemas: suite?.schemas ?? 0,
    compile_p50_ms: suite ? round(quantile(suite.compile, 0.5), 2) : null,
    compile_p99_ms: suite ? round(quantile(suite.compile, 0.99), 2) : null,
    mask_p50_us: suite ? quantile(suite.mask, 0.5) : null,
    mask_p99_us: suite ? quantile(suite.mask, 0.99) : null,
    mask_max_us: suite ? quantile(suite.mask, 1) : null,
    constrained_ratio: round(ratio, 3),
  }),
);
