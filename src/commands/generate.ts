/**
 * `multilora generate --model <dir> [--lora <file.safetensors>] (--prompt <text> | --prompt-ids 1,2,3) ...`
 *
 * Runs the CPU engine once, from the command line: text streams to stdout as it is generated, or, with
 * --json, one line {"token_ids": [...], "logprobs": [...], "text": "..."} where logprobs[i] is the
 * log-probability of token_ids[i] (log-softmax of the raw logits). --prompt-ids are used as given (no BOS).
 */

import { openEngine } from "../engine/backend.ts";
import { loadTokenizer, type Tokenizer } from "../engine/tokenizer.ts";
import { readTrtllmLora } from "../lora/trtllm-adapter.ts";
import { parseCommandArgs, UsageError } from "./args.ts";

export const GENERATE_HELP = `Usage: multilora generate --model <dir> (--prompt <text> | --prompt-ids 1,2,3) [options]

Options:
      --model <dir>          a Hugging Face Llama/Mistral/Qwen2 folder, or a trtllm-build engine dir (required)
      --backend auto|cpu|trtllm  default auto: trtllm for an engine dir, cpu for a checkpoint
      --lora <file>          a LoRA adapter in TensorRT-LLM's format (multilora extract makes one)
      --lora-scale <x>       multiplies the adapter's contribution (default 1)
      --prompt <text>        text, tokenized with the model's tokenizer.json (special tokens added)
      --prompt-ids <ids>     comma-separated token ids, used as given
      --max-tokens <n>       default 32
      --temperature <t>      default 1; 0 is greedy
      --top-k <k>            default 0 (off)
      --top-p <p>            default 1 (off)
      --seed <n>             default: random
      --logprobs <k>         also report the k most likely tokens at each step (with --json)
      --ignore-eos           do not stop at the tokenizer's end-of-sequence tokens
      --threads <n>          default: every core
      --json                 print {"token_ids", "logprobs", "text"} instead of streaming text
  -h, --help                 show this help`;

function number(name: string, value: string | undefined, fallback: number, integer = false): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || (integer && !Number.isSafeInteger(n)))
    throw new UsageError(`--${name} ${value}: expected a number`);
  return n;
}

export async function runGenerate(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    model: { type: "string" },
    backend: { type: "string" },
    lora: { type: "string" },
    "lora-scale": { type: "string" },
    prompt: { type: "string" },
    "prompt-ids": { type: "string" },
    "max-tokens": { type: "string" },
    temperature: { type: "string" },
    "top-k": { type: "string" },
    "top-p": { type: "string" },
    seed: { type: "string" },
    logprobs: { type: "string" },
    "ignore-eos": { type: "boolean" },
    threads: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(GENERATE_HELP);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
  if (!values.model) throw new UsageError("missing --model <dir>");
  if ((values.prompt === undefined) === (values["prompt-ids"] === undefined)) {
    throw new UsageError("give exactly one of --prompt <text> and --prompt-ids <ids>");
  }
  const ids = values["prompt-ids"]?.split(",").map((x) => number("prompt-ids", x.trim(), 0, true));
  const requested = values.backend ?? "auto";
  if (requested !== "auto" && requested !== "cpu" && requested !== "trtllm")
    throw new UsageError(`--backend ${requested}: expected auto, cpu or trtllm`);
  const tokenizer = loadTokenizerIfAny(values.model, values.prompt !== undefined);
  const prompt = ids ?? (tokenizer as Tokenizer).encode(values.prompt as string, { addSpecialTokens: true });
  const lora = values.lora
    ? readTrtllmLora(values.lora, 1n, number("lora-scale", values["lora-scale"], 1)).lora
    : undefined;
  const { engine } = openEngine(values.model, requested, {
    cpu: { threads: values.threads === undefined ? undefined : number("threads", values.threads, 0, true) },
  });
  try {
    const handle = engine.enqueue({
      prompt,
      maxNewTokens: number("max-tokens", values["max-tokens"], 32, true),
      temperature: number("temperature", values.temperature, 1),
      topK: number("top-k", values["top-k"], 0, true),
      topP: number("top-p", values["top-p"], 1),
      seed: values.seed === undefined ? undefined : BigInt(number("seed", values.seed, 0, true)),
      topLogprobs: values.json ? number("logprobs", values.logprobs, 0, true) : undefined,
      endIds: values["ignore-eos"] ? [] : [...(tokenizer?.eosTokenIds ?? [])],
      lora,
    });
    const tokenIds: number[] = [];
    const logprobs: number[] = [];
    const top: { token: number; logprob: number }[][] = [];
    const stream = tokenizer?.createStreamDecoder();
    for await (const event of handle.events) {
      if (event.token < 0) continue;
      tokenIds.push(event.token);
      logprobs.push(event.logprob ?? 0);
      top.push(event.top ?? []);
      if (!values.json && stream) process.stdout.write(stream.push(event.token));
    }
    if (values.json) {
      const text = tokenizer ? tokenizer.decode(tokenIds) : null;
      const result: Record<string, unknown> = { token_ids: tokenIds, logprobs, text };
      if (values.logprobs !== undefined) result.top_logprobs = top;
      console.log(JSON.stringify(result));
    } else {
      process.stdout.write(`${stream ? stream.flush() : tokenIds.join(" ")}\n`);
    }
  } finally {
    await engine.close();
  }
  return 0;
}

/** The tokenizer; required for --prompt, optional (ids only) otherwise. */
function loadTokenizerIfAny(dir: string, required: boolean): Tokenizer | undefined {
  try {
    return loadTokenizer(dir);
  } catch (e) {
    if (required) throw e;
    return undefined;
  }
}
