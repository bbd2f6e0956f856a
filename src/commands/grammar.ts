/**
 * `multilora grammar check`: whether a JSON Schema compiles to a constraint, and whether instances pass
 * it token by token with a model's tokenizer, with compile and mask times. A batch mode reads JSON lines
 * of schemas with test instances and writes one JSON line of results per input line (thousands of
 * schemas in one process).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { ConstraintGrammar, ConstraintVocab } from "../engine/constraint-native.ts";
import { buildDemoTokenizer, demoGenerationConfig, demoTokenizerConfig } from "../engine/demo-tokenizer.ts";
import { loadTokenizer, type Tokenizer } from "../engine/tokenizer.ts";
import { MultiloraError } from "../errors.ts";
import { compileConstraint } from "../structured/constraint.ts";
import { checkInstance, type InstanceResult } from "../structured/instance-check.ts";
import { pythonDumps } from "../structured/python-json.ts";
import { parseCommandArgs, UsageError } from "./args.ts";

export const GRAMMAR_HELP = `Usage: multilora grammar check --tokenizer <model-dir | demo> --schema <s.json> [--instance <i.json> ...] [--json]
       multilora grammar check --tokenizer <model-dir | demo> --batch <file.jsonl> [--timeout-ms N]

Compiles a JSON Schema to the constraint structured output enforces (or names each keyword it cannot
enforce), and feeds each instance's text, tokenized by the model's tokenizer, through the token mask one
token at a time: "accepted", or "rejected at token k" with that token. Times are per compile and per mask.

Batch mode reads JSON lines {"id", "schema", "tests": [{"data", "valid"}]} and writes one JSON line per
input line: {"id", "compiled", "error"?, "compile_us", "tests": [{"accepted", "rejected_at"?}], "mask_us"}.
Each data is written as Python's json.dumps does (", " and ": " separators, non-ASCII kept).

Options:
      --tokenizer <dir>   a model folder with tokenizer.json, or "demo" for the embedded demo model's
      --schema <file>     the JSON Schema
      --instance <file>   a JSON instance (its text as written), repeatable
      --batch <file>      JSON lines as above ("-" for stdin)
      --timeout-ms <n>    compile time limit per schema (default 2000)
      --json              print the single-schema report as JSON
  -h, --help              show this help`;

function demoTokenizer(): Tokenizer {
  const dir = mkdtempSync(join(tmpdir(), "multilora-demo-tokenizer-"));
  try {
    writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(buildDemoTokenizer()));
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify(demoTokenizerConfig()));
    writeFileSync(join(dir, "generation_config.json"), JSON.stringify(demoGenerationConfig()));
    return loadTokenizer(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A tokenizer with its constraint vocabulary (the caller releases the vocab). */
export function openVocabulary(where: string): { tokenizer: Tokenizer; vocab: ConstraintVocab } {
  const tokenizer = where === "demo" ? demoTokenizer() : loadTokenizer(where);
  const tokens = tokenizer.constraintTokens();
  if (!tokens)
    throw new MultiloraError(`${tokenizer.path}: not a byte-level vocabulary; structured output needs one`, {
      code: "unsupported",
    });
  return { tokenizer, vocab: ConstraintVocab.create(tokens.bytes, tokens.excluded) };
}

export interface SchemaReport {
  compiled: boolean;
  error?: string;
  compileUs: number;
  tests: InstanceResult[];
}

/** Compiles a schema and checks each instance text; never throws for a schema's own problems. */
export function checkSchema(
  vocab: ConstraintVocab,
  tokenizer: Tokenizer,
  schema: unknown,
  texts: readonly string[],
  timeoutMs: number,
): SchemaReport {
  const t0 = performance.now();
  let grammar: ConstraintGrammar;
  try {
    const program = compileConstraint({ kind: "json_schema", schema }, timeoutMs);
    grammar = ConstraintGrammar.create(vocab, program);
  } catch (e) {
    if (!(e instanceof MultiloraError) || e.code === "internal_error") throw e;
    return {
      compiled: false,
      error: e.message,
      compileUs: Math.round((performance.now() - t0) * 1000),
      tests: [],
    };
  }
  const compileUs = Math.round((performance.now() - t0) * 1000);
  try {
    return { compiled: true, compileUs, tests: texts.map((text) => checkInstance(grammar, tokenizer, text)) };
  } finally {
    grammar.release();
  }
}

async function runBatch(
  vocab: ConstraintVocab,
  tokenizer: Tokenizer,
  file: string,
  timeoutMs: number,
): Promise<number> {
  const input = file === "-" ? process.stdin : (await import("node:fs")).createReadStream(file);
  const lines = createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY });
  let n = 0;
  for await (const line of lines) {
    n++;
    if (line.trim() === "") continue;
    let id: unknown = null;
    let out: Record<string, unknown>;
    try {
      const item = JSON.parse(line) as {
        id?: unknown;
        schema?: unknown;
        tests?: { data: unknown; valid?: boolean }[];
      };
      id = item.id ?? null;
      // Each instance as Python writes it (the data's own numbers, e.g. 1.0, kept as written in the line).
      const raw = rawTestData(line);
      const texts = (item.tests ?? []).map((_, i) => pythonDumps(raw[i] ?? "null"));
      const report = checkSchema(vocab, tokenizer, item.schema, texts, timeoutMs);
      out = {
        id,
        compiled: report.compiled,
        ...(report.error ? { error: report.error } : {}),
        compile_us: report.compileUs,
        tests: report.tests.map((t) =>
          t.accepted ? { accepted: true } : { accepted: false, rejected_at: t.rejectedAt },
        ),
        mask_us: report.tests.flatMap((t) => t.maskUs),
      };
    } catch (e) {
      out = {
        id,
        compiled: false,
        error: `line ${n}: ${e instanceof Error ? e.message : String(e)}`,
        compile_us: 0,
        tests: [],
        mask_us: [],
      };
    }
    process.stdout.write(`${JSON.stringify(out)}\n`);
  }
  return 0;
}

/** The JSON text of each tests[i].data in a batch line, as written (JSON.parse would turn 1.0 into 1). */
function rawTestData(line: string): string[] {
  const out: string[] = [];
  const at = findKey(line, "tests", 0);
  if (at < 0) return out;
  let i = skipWs(line, at);
  if (line[i] !== "[") return out;
  i++;
  for (;;) {
    i = skipWs(line, i);
    if (line[i] !== "{") return out;
    const end = valueEnd(line, i);
    const obj = line.slice(i, end);
    const d = findKey(obj, "data", 0);
    out.push(d < 0 ? "null" : obj.slice(skipWs(obj, d), valueEnd(obj, skipWs(obj, d))));
    i = skipWs(line, end);
    if (line[i] !== ",") return out;
    i++;
  }
}

function skipWs(s: string, i: number): number {
  while (i < s.length && " \t\r\n".includes(s[i] as string)) i++;
  return i;
}

/** The index just past the JSON value starting at i. */
function valueEnd(s: string, i: number): number {
  if (s[i] === '"') {
    for (let j = i + 1; j < s.length; j++) {
      if (s[j] === "\\") j++;
      else if (s[j] === '"') return j + 1;
    }
    return s.length;
  }
  if (s[i] === "{" || s[i] === "[") {
    let depth = 0;
    for (let j = i; j < s.length; j++) {
      const c = s[j];
      if (c === '"') j = valueEnd(s, j) - 1;
      else if (c === "{" || c === "[") depth++;
      else if (c === "}" || c === "]") {
        depth--;
        if (depth === 0) return j + 1;
      }
    }
    return s.length;
  }
  let j = i;
  while (j < s.length && !",}] \t\r\n".includes(s[j] as string)) j++;
  return j;
}

/** The index of the value of a top-level key of the object starting at `from`, or -1. */
function findKey(s: string, key: string, from: number): number {
  let i = skipWs(s, from);
  if (s[i] !== "{") return -1;
  i++;
  for (;;) {
    i = skipWs(s, i);
    if (s[i] !== '"') return -1;
    const keyEnd = valueEnd(s, i);
    const name = JSON.parse(s.slice(i, keyEnd)) as string;
    i = skipWs(s, keyEnd);
    if (s[i] !== ":") return -1;
    i = skipWs(s, i + 1);
    if (name === key) return i;
    i = skipWs(s, valueEnd(s, i));
    if (s[i] !== ",") return -1;
    i++;
  }
}

export async function runGrammar(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === "-h" || sub === "--help") {
    console.log(GRAMMAR_HELP);
    return sub === undefined ? 2 : 0;
  }
  if (sub !== "check")
    throw new UsageError(`unknown grammar command "${sub}"; the command is "grammar check"`);
  const { values } = parseCommandArgs(rest, {
    tokenizer: { type: "string" },
    schema: { type: "string" },
    instance: { type: "string", multiple: true },
    batch: { type: "string" },
    "timeout-ms": { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(GRAMMAR_HELP);
    return 0;
  }
  if (!values.tokenizer) throw new UsageError("--tokenizer <model-dir | demo> is required");
  if ((values.schema === undefined) === (values.batch === undefined))
    throw new UsageError("give --schema or --batch (one of them)");
  const timeoutMs = values["timeout-ms"] === undefined ? 2000 : Number(values["timeout-ms"]);
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0)
    throw new UsageError("--timeout-ms must be a positive number");
  const { tokenizer, vocab } = openVocabulary(values.tokenizer);
  try {
    if (values.batch !== undefined) return await runBatch(vocab, tokenizer, values.batch, timeoutMs);
    const readJsonFile = (path: string, what: string): unknown => {
      try {
        return JSON.parse(readFileSync(path, "utf8"));
      } catch (e) {
        throw new MultiloraError(`${path}: cannot read the ${what} (${(e as Error).message})`, {
          code: "usage",
        });
      }
    };
    const schema = readJsonFile(values.schema as string, "schema");
    const instances = (values.instance ?? []).map((path) => ({
      path,
      text: readFileSync(path, "utf8").trim(),
    }));
    const report = checkSchema(
      vocab,
      tokenizer,
      schema,
      instances.map((i) => i.text),
      timeoutMs,
    );
    if (values.json) {
      console.log(JSON.stringify({ ...report, instances: instances.map((i) => i.path) }, null, 2));
    } else {
      console.log(
        report.compiled
          ? `compiled in ${(report.compileUs / 1000).toFixed(2)} ms`
          : `not compiled: ${report.error}`,
      );
      report.tests.forEach((t, i) => {
        const sorted = [...t.maskUs].sort((a, b) => a - b);
        const p50 = sorted[Math.floor(sorted.length / 2)] ?? 0;
        const max = sorted[sorted.length - 1] ?? 0;
        const verdict = t.accepted
          ? "accepted"
          : `rejected at token ${t.rejectedAt}${t.rejectedText ? ` ${JSON.stringify(t.rejectedText)}` : " (the end: the text is incomplete)"}`;
        console.log(
          `${instances[i]?.path}: ${verdict} (${t.tokens} tokens; mask p50 ${p50} µs, max ${max} µs)`,
        );
      });
    }
    return report.compiled && report.tests.every((t) => t.accepted) ? 0 : 1;
  } finally {
    vocab.release();
  }
}
