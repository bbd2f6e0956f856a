/**
 * `multilora check [model-or-engine-dir] [lora-dir] [--json]`: the self-test an operator runs after
 * deploying, on any backend. It starts the engine and the server as `serve` does (every serve option
 * applies), on a loopback port, with an adapter cache that holds one adapter and a private copy of the first
 * two adapters of the LoRA dir, then runs a fixed script of requests and prints one line per behaviour:
 * PASS / FAIL / SKIP and what was measured. The exit code is the number of failures. Without a model dir it
 * checks the demo model and its two adapters.
 */
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import * as v from "valibot";
import { writeDemoModel } from "../engine/demo-model.ts";
import type { GenerateRequest, TokenEvent } from "../engine/engine.ts";
import { UsageError } from "./args.ts";
import {
  defaultCacheDir,
  type RunningServer,
  SERVE_HELP,
  ServeConfigSchema,
  serveConfig,
  startServer,
} from "./serve.ts";

export const CHECK_HELP = `Usage: multilora check [model-or-engine-dir] [lora-dir] [--json] [serve options]

Starts the engine and server as "multilora serve" would (every serve option applies; the adapter cache is
made to hold one adapter), runs a fixed script of requests against it, and prints one line per behaviour
with PASS, FAIL or SKIP and the measured value. Exit code: the number of failures.
Without a model dir: the demo model and its two adapters. Uses the first two adapters of lora-dir (copied
to a temporary dir, so lora-dir is never changed).

  --json     one JSON document instead of lines
  -h, --help show this help

On a GPU, run it first and report its output.

Serve options:
${SERVE_HELP.split("\n").slice(2).join("\n")}`;

export type CheckStatus = "PASS" | "FAIL" | "SKIP";

export interface CheckResult {
  name: string;
  status: CheckStatus;
  value: string;
}

const PROMPT = "The";
const TOKENS = 16;

interface Completion {
  status: number;
  text: string;
  finish: string | null;
  logprobs: number[];
  completionTokens: number;
  code: string | null;
}

/** The adapters of a LoRA dir, as the registry names them, sorted. */
function adapterEntries(dir: string): { name: string; path: string }[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((entry) => !entry.startsWith("."))
    .flatMap((entry) => {
      const path = join(dir, entry);
      if (entry.endsWith(".safetensors") && statSync(path).isFile())
        return [{ name: entry.slice(0, -".safetensors".length), path }];
      if (statSync(path).isDirectory() && existsSync(join(path, "adapter_config.json")))
        return [{ name: entry, path }];
      return [];
    })
    .sort((a, b) => a.name.localeCompare(b.name));
}

/** Copies an adapter (file or PEFT folder) to `<dir>/<name>` in its form, replacing what is there at once. */
function placeAdapter(from: string, dir: string, name: string): void {
  const isFile = statSync(from).isFile();
  const target = join(dir, isFile ? `${name}.safetensors` : name);
  const staging = join(dir, `.staging-${name}${isFile ? ".safetensors" : ""}`);
  cpSync(from, staging, { recursive: true });
  if (!isFile) rmSync(target, { recursive: true, force: true });
  renameSync(staging, target);
}

/** The schema the structured-output check asks for. */
const CHECK_SCHEMA = {
  type: "object",
  properties: { id: { type: "integer", minimum: 0, maximum: 999 }, tag: { enum: ["alpha", "beta"] } },
  required: ["id", "tag"],
  additionalProperties: false,
};

class Client {
  constructor(
    private readonly url: string,
    readonly model: string,
  ) {}

  /** A greedy completion of the check's prompt, with logprobs; `body` overrides. */
  private post(body: Record<string, unknown>): RequestInit {
    return {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: this.model,
        prompt: PROMPT,
        max_tokens: TOKENS,
        temperature: 0,
        logprobs: 0,
        ...body,
      }),
    };
  }

  async complete(body: Record<string, unknown>): Promise<Completion> {
    const response = await fetch(`${this.url}/v1/completions`, this.post(body));
    const json = (await response.json()) as {
      choices?: {
        text: string;
        finish_reason: string | null;
        logprobs?: { token_logprobs: number[] } | null;
      }[];
      usage?: { completion_tokens: number };
      error?: { code: string | null };
    };
    const choice = json.choices?.[0];
    return {
      status: response.status,
      text: choice?.text ?? "",
      finish: choice?.finish_reason ?? null,
      logprobs: choice?.logprobs?.token_logprobs ?? [],
      completionTokens: json.usage?.completion_tokens ?? 0,
      code: json.error?.code ?? null,
    };
  }

  /** A streamed completion: the text and logprobs of every chunk joined; `abortAfter` chunks, then abort. */
  async stream(body: Record<string, unknown>, abortAfter?: number): Promise<Completion> {
    const abort = new AbortController();
    const response = await fetch(`${this.url}/v1/completions`, {
      ...this.post({ ...body, stream: true }),
      signal: abort.signal,
    });
    const out: Completion = {
      status: response.status,
      text: "",
      finish: null,
      logprobs: [],
      completionTokens: 0,
      code: null,
    };
    const reader = response.body?.getReader();
    if (!reader) return out;
    const decoder = new TextDecoder();
    let buffered = "";
    let chunks = 0;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let end = buffered.indexOf("\n\n");
        while (end >= 0) {
          const event = buffered.slice(0, end).trim();
          buffered = buffered.slice(end + 2);
          end = buffered.indexOf("\n\n");
          if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
          const chunk = JSON.parse(event.slice(6)) as {
            choices?: {
              text: string;
              finish_reason: string | null;
              logprobs?: { token_logprobs: number[] } | null;
            }[];
          };
          const c = chunk.choices?.[0];
          if (!c) continue;
          out.text += c.text;
          out.logprobs.push(...(c.logprobs?.token_logprobs ?? []));
          out.finish = c.finish_reason ?? out.finish;
          chunks++;
          if (abortAfter !== undefined && chunks >= abortAfter) {
            abort.abort();
            return out;
          }
        }
      }
    } catch (e) {
      if (!abort.signal.aborted) throw e;
    }
    return out;
  }
}

async function engineTokens(server: RunningServer, request: Partial<GenerateRequest>): Promise<TokenEvent[]> {
  const core = server.ctx.core;
  const handle = core.engine.enqueue({
    prompt: core.tokenizer.encode(PROMPT),
    maxNewTokens: TOKENS,
    temperature: 0,
    ...request,
  });
  const events: TokenEvent[] = [];
  for await (const e of handle.events) events.push(e);
  return events;
}

async function waitIdle(server: RunningServer, ms: number): Promise<number | null> {
  const start = performance.now();
  while (performance.now() - start < ms) {
    const s = server.ctx.core.engine.stats();
    if (s.running === 0 && s.queued === 0) return performance.now() - start;
    await Bun.sleep(5);
  }
  return null;
}

/** Logprobs further apart than this are different outputs (batching may move them a little on a GPU). */
const LOGPROB_TOLERANCE = 1e-2;

function logprobDiff(a: Completion, b: Completion): number {
  if (a.logprobs.length !== b.logprobs.length) return Number.POSITIVE_INFINITY;
  return a.logprobs.reduce((m, x, i) => Math.max(m, Math.abs(x - (b.logprobs[i] as number))), 0);
}

/** The same text and, within the tolerance, the same logprobs. */
const same = (a: Completion, b: Completion) =>
  a.status === 200 && b.status === 200 && a.text === b.text && logprobDiff(a, b) <= LOGPROB_TOLERANCE;
const describe = (a: Completion, b: Completion) =>
  a.status !== 200 || b.status !== 200
    ? `HTTP ${a.status} / ${b.status}`
    : same(a, b)
      ? "identical"
      : a.text === b.text
        ? `same text, logprobs differ by ${logprobDiff(a, b).toFixed(3)}`
        : "different text";

/** Runs the script against a started server; `adapters` are the names in its LoRA dir ([a, b, replaced]). */
async function script(
  server: RunningServer,
  adapters: string[],
  replace: (withSecond: boolean) => void,
  maxBatch: number,
  kvCacheReuse: boolean,
): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  const record = (name: string, ok: boolean | null, value: string) =>
    results.push({ name, status: ok === null ? "SKIP" : ok ? "PASS" : "FAIL", value });
  const client = new Client(server.url, server.ctx.core.servedNames[0] ?? "");
  const caps = server.ctx.core.engine.capabilities;
  const [a, b, replaced] = adapters;

  // Before any adapter is used, so the second one is surely not cached.
  if (b) {
    const r = await client.complete({ model: b, load_lora_weights: "never" });
    record(
      "load_lora_weights never on an uncached adapter is a 409",
      r.status === 409 && r.code === "lora_not_cached",
      `HTTP ${r.status} ${r.code ?? ""}`.trim(),
    );
  } else record("load_lora_weights never on an uncached adapter is a 409", null, "needs two adapters");

  const base = await client.complete({});
  const again = await client.complete({});
  record(
    "greedy output is deterministic",
    same(base, again),
    `${base.completionTokens} tokens, ${describe(base, again)}`,
  );

  const batch = await Promise.all([
    client.complete({}),
    ...Array.from({ length: Math.max(1, maxBatch - 1) }, (_, i) =>
      client.complete({ prompt: `${i} ${PROMPT} ${i}` }),
    ),
  ]);
  record(
    "same output alone and in a batch",
    same(base, batch[0] as Completion),
    `batch of ${batch.length}: ${describe(base, batch[0] as Completion)}`,
  );

  const refs = new Map<string, Completion>();
  if (a && b) {
    for (const name of [a, b]) refs.set(name, await client.complete({ model: name }));
    const changed = [a, b].map((name) => ({ name, r: refs.get(name) as Completion }));
    record(
      "an adapter changes the output",
      changed.every(({ r }) => r.status === 200 && !same(r, base)),
      changed
        .map(({ name, r }) => `${name}: ${describe(r, base).replace("identical", "same as the base")}`)
        .join(", "),
    );
  } else record("an adapter changes the output", null, "needs two adapters in the LoRA dir");

  if (!a) record("lora_scale 0 equals the base", null, "needs an adapter");
  else if (!caps.loraScale)
    record("lora_scale 0 equals the base", null, "this backend has no per-request lora_scale (501)");
  else {
    const r = await client.complete({ model: a, lora_scale: 0 });
    record("lora_scale 0 equals the base", same(r, base), describe(r, base));
  }

  if (a && b) {
    const before = server.ctx.core.engine.stats().loraEvictions;
    const order = [a, b, a, b];
    const outputs = [];
    for (const name of order) outputs.push(await client.complete({ model: name }));
    const correct = outputs.filter((r, i) => same(r, refs.get(order[i] as string) as Completion)).length;
    const evictions = server.ctx.core.engine.stats().loraEvictions - before;
    record(
      "a cache holding one adapter alternates two",
      correct === order.length,
      `${correct}/${order.length} outputs correct, ${evictions} evictions${caps.loraTaskListing ? "" : " (not counted by this backend)"}`,
    );
  } else record("a cache holding one adapter alternates two", null, "needs two adapters");

  if (a && b && replaced) {
    const first = await client.complete({ model: replaced });
    replace(true);
    const second = await client.complete({ model: replaced });
    const refA = refs.get(a) as Completion;
    const refB = refs.get(b) as Completion;
    record(
      "a replaced file is served with the new weights",
      same(first, refA) && same(second, refB),
      `before: ${same(first, refA) ? "first adapter's output" : "wrong output"}, after: ${same(second, refB) ? "second adapter's output" : "wrong output"}`,
    );
  } else record("a replaced file is served with the new weights", null, "needs two adapters");

  // A stop string from the middle of the base text: the text must end just before it.
  let at = -1;
  for (let k = 1; k + 2 <= base.text.length; k++) {
    const s = base.text.slice(k, k + 2);
    if (s.trim().length === 2 && base.text.indexOf(s) === k) {
      at = k;
      break;
    }
  }
  if (at < 0)
    record(
      "stop strings end the text without the stop text",
      null,
      `no usable stop string in ${JSON.stringify(base.text)}`,
    );
  else {
    const stop = base.text.slice(at, at + 2);
    const r = await client.complete({ stop: [stop] });
    record(
      "stop strings end the text without the stop text",
      r.text === base.text.slice(0, at) && r.finish === "stop",
      `stop ${JSON.stringify(stop)}: ${r.text.length} chars, finish ${r.finish}`,
    );
  }

  // End ids at the engine: the k-th greedy token as the end id ends the output just before it.
  const greedy = (await engineTokens(server, {})).filter((e) => e.token >= 0).map((e) => e.token);
  // the first token not seen before it (else the first: the output is then empty)
  const k = Math.max(
    0,
    greedy.findIndex((t, i) => i > 0 && !greedy.slice(0, i).includes(t)),
  );
  if (greedy.length === 0) record("end ids end the output without the end token", null, "no greedy output");
  else {
    const endId = greedy[k] as number;
    const events = await engineTokens(server, { endIds: [endId] });
    const last = events.at(-1);
    const tokens = events
      .filter((e) => e.token >= 0 && !(e === last && e.finishReason === "end_id"))
      .map((e) => e.token);
    record(
      "end ids end the output without the end token",
      last?.finishReason === "end_id" && tokens.join() === greedy.slice(0, k).join(),
      `end id ${endId}: ${tokens.length} tokens (expected ${k}), finish ${last?.finishReason ?? "none"}`,
    );
  }

  // Structured output: a JSON Schema enforced on every token, so the finished text validates.
  const name = "response_format json_schema: the output validates";
  if (!caps.constraints) record(name, null, "this backend has no structured output yet (501)");
  else {
    const r = await client.complete({
      response_format: { type: "json_schema", json_schema: { name: "check", schema: CHECK_SCHEMA } },
      max_tokens: 256,
      logprobs: null,
    });
    let value: { id?: unknown; tag?: unknown } | null = null;
    try {
      value = JSON.parse(r.text);
    } catch {}
    const valid =
      value !== null &&
      Number.isInteger(value.id) &&
      (value.id as number) >= 0 &&
      (value.id as number) <= 999 &&
      (value.tag === "alpha" || value.tag === "beta") &&
      Object.keys(value).length === 2;
    record(
      name,
      r.status === 200 && r.finish === "stop" && valid,
      `HTTP ${r.status}, finish ${r.finish}: ${JSON.stringify(r.text).slice(0, 80)}`,
    );
  }

  // Prefix reuse: the same long prompt twice; the second copies the first's KV blocks.
  const reuseName = "a repeated prompt reuses its KV prefix and answers the same";
  if (!kvCacheReuse) record(reuseName, null, "--kv-cache-reuse off");
  else {
    const tokenizer = server.ctx.core.tokenizer;
    const room = Math.min(400, server.ctx.core.engine.maxSeqLen - TOKENS - 8);
    let text = "";
    for (let i = 0; tokenizer.encode(`${text} ${PROMPT} ${i}.`).length <= room; i++)
      text += ` ${PROMPT} ${i}.`;
    const before = server.ctx.core.engine.stats();
    const first = await client.complete({ prompt: text });
    const start = performance.now();
    const second = await client.complete({ prompt: text });
    const ms = performance.now() - start;
    const after = server.ctx.core.engine.stats();
    const hits = after.prefixHitTokens - before.prefixHitTokens;
    const asked = after.prefixQueryTokens - before.prefixQueryTokens;
    record(
      reuseName,
      hits > 0 && same(first, second),
      `${hits} of ${asked} prompt tokens reused, ${describe(first, second)}, the second in ${ms.toFixed(0)} ms`,
    );
  }

  const plain = await client.complete({});
  const streamed = await client.stream({});
  const delta = plain.logprobs.reduce(
    (m, x, i) => Math.max(m, Math.abs(x - (streamed.logprobs[i] ?? Number.NaN))),
    0,
  );
  record(
    "streaming logprobs equal the non-streaming ones",
    plain.status === 200 &&
      plain.logprobs.length > 0 &&
      plain.logprobs.length === streamed.logprobs.length &&
      delta <= 1e-3,
    `${plain.logprobs.length}/${streamed.logprobs.length} logprobs, max |diff| ${Number.isNaN(delta) ? "NaN" : delta.toExponential(1)}, ${caps.rawLogprobs ? "raw log-softmax" : "sampling layer's (after temperature and penalties)"}`,
  );

  const long = Math.max(TOKENS, Math.min(512, server.ctx.core.engine.maxSeqLen - 64));
  const cut = await client.stream({ max_tokens: long }, 2);
  const freedMs = await waitIdle(server, 5000);
  const after = await client.complete({});
  record(
    "cancel frees the slot",
    cut.status === 200 && freedMs !== null && same(after, base),
    freedMs === null
      ? "still running 5 s after the client left"
      : `freed ${freedMs.toFixed(0)} ms after the client left; next request ${describe(after, base)}`,
  );

  const rate = async (n: number) => {
    const start = performance.now();
    const rs = await Promise.all(
      Array.from({ length: n }, (_, i) => client.complete({ prompt: `${PROMPT} ${i}`, max_tokens: 32 })),
    );
    const tokens = rs.reduce((sum, r) => sum + r.completionTokens, 0);
    return {
      ok: rs.every((r) => r.status === 200) && tokens > 0,
      perSecond: tokens / ((performance.now() - start) / 1000),
    };
  };
  const one = await rate(1);
  record("tokens/s at batch 1", one.ok, `${one.perSecond.toFixed(1)} tokens/s`);
  const many = await rate(maxBatch);
  record(`tokens/s at batch ${maxBatch} (--max-batch)`, many.ok, `${many.perSecond.toFixed(1)} tokens/s`);
  return results;
}

/** Parses the arguments, starts the stack, runs the script, stops; the results in order. */
export async function runChecks(argv: string[]): Promise<CheckResult[]> {
  const { config } = serveConfig(argv);
  const cacheDir = resolve(config["cache-dir"] ?? defaultCacheDir());
  let modelDir = config["model-dir"];
  let loraDir = config["lora-dir"];
  if (!modelDir) {
    modelDir = join(cacheDir, "multilora-demo");
    if (!existsSync(join(modelDir, "config.json"))) writeDemoModel(modelDir);
    loraDir ??= join(modelDir, "lora");
  }
  const work = mkdtempSync(join(tmpdir(), "multilora-check-"));
  try {
    const checkLoras = join(work, "lora");
    mkdirSync(checkLoras);
    const found = loraDir ? adapterEntries(resolve(loraDir)).slice(0, 2) : [];
    for (const entry of found) placeAdapter(entry.path, checkLoras, entry.name);
    const [first, second] = found;
    const replacedName = "check-replaced";
    if (first && second) placeAdapter(first.path, checkLoras, replacedName);
    const server = await startServer(
      v.parse(ServeConfigSchema, {
        ...config,
        "model-dir": modelDir,
        "lora-dir": checkLoras,
        host: "127.0.0.1",
        port: 0,
        "log-level": "silent",
        "max-loras": 1,
        preload: [],
        pin: [],
        "cache-dir": cacheDir,
      }),
      () => {},
    );
    try {
      const adapters = [...found.map((e) => e.name), ...(first && second ? [replacedName] : [])];
      const replace = () => second && placeAdapter(second.path, checkLoras, replacedName);
      return await script(
        server,
        adapters,
        replace,
        config["max-batch"] ?? 8,
        config["kv-cache-reuse"] === "on",
      );
    } finally {
      await server.stop();
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

export function formatResults(results: CheckResult[]): string {
  const width = Math.max(...results.map((r) => r.name.length));
  const lines = results.map((r) => `${r.status}  ${r.name.padEnd(width)}  ${r.value}`);
  const failed = results.filter((r) => r.status === "FAIL").length;
  const skipped = results.filter((r) => r.status === "SKIP").length;
  return [...lines, `${results.length - failed - skipped} passed, ${failed} failed, ${skipped} skipped`].join(
    "\n",
  );
}

export async function runCheck(argv: string[]): Promise<number> {
  if (argv.includes("-h") || argv.includes("--help")) {
    console.log(CHECK_HELP);
    return 0;
  }
  const json = argv.includes("--json");
  const rest = argv.filter((a) => a !== "--json");
  if (rest.includes("--print-config"))
    throw new UsageError("--print-config is serve's; check runs the checks");
  const results = await runChecks(rest);
  const failed = results.filter((r) => r.status === "FAIL").length;
  console.log(json ? JSON.stringify({ results, failed }, null, 2) : formatResults(results));
  return failed;
}
