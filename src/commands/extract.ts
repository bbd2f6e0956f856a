/**
 * `multilora extract -i <peft-dir> -o <file.safetensors | dir> [-t dtype] [--base dir] [--skip-unsupported]`
 *
 * Converts a Hugging Face PEFT adapter into TensorRT-LLM's LoRA format, with the short flags of llgtrt's
 * `extract_lora.py`. Prints one summary line on success; on any problem exits non-zero, names the file and
 * what is wrong, and leaves no output file.
 */
import { existsSync, statSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { floatDTypeName, parseFloatDType } from "../formats/dtypes.ts";
import { HF_MODULES, type ModuleName } from "../formats/lora-modules.ts";
import { readBaseModel } from "../formats/model-config.ts";
import { convertPeftAdapter } from "../lora/convert.ts";
import { readPeftAdapter } from "../lora/peft-adapter.ts";
import { formatBytes, parseCommandArgs, printErr, UsageError } from "./args.ts";

export const EXTRACT_HELP = `Usage: multilora extract -i <peft-dir> -o <file.safetensors | dir> [options]

Converts a Hugging Face PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) into
TensorRT-LLM's LoRA format: one safetensors file with "weights" [N, R] and "config" [N, 3].

Options:
  -i, --in-file <dir>        the PEFT adapter folder (required)
  -o, --out-file <path>      output file; with a directory, <dir>/<adapter-folder-name>.safetensors (required)
  -t, --dtype <dtype>        float16 | bfloat16 | float32 (default: the engine's with an engine --base,
                             else the adapter's own)
      --base <dir>           a Hugging Face model or TensorRT-LLM engine dir (its config.json): check every
                             shape, layer, rank and module against it
      --skip-unsupported     skip modules TensorRT-LLM cannot carry (embedding LoRA, lm_head,
                             modules_to_save, unknown modules) with a warning instead of failing
  -v, --verbose              also print the source's sha256 and the output's full path
  -h, --help                 show this help`;

/** Output file for `-o`: a directory (existing, or written with a trailing slash) gets the adapter's name. */
export function resolveOutput(out: string, adapterName: string): string {
  const isDir = out.endsWith("/") || (existsSync(out) && statSync(out).isDirectory());
  return resolve(isDir ? join(out, `${adapterName}.safetensors`) : out);
}

/** Progress on stderr for adapters of at least this many output bytes. */
const PROGRESS_MIN_BYTES = 64 << 20;

export async function runExtract(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    "in-file": { type: "string", short: "i" },
    "out-file": { type: "string", short: "o" },
    dtype: { type: "string", short: "t" },
    base: { type: "string" },
    "skip-unsupported": { type: "boolean" },
    verbose: { type: "boolean", short: "v" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(EXTRACT_HELP);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
  const input = values["in-file"];
  const out = values["out-file"];
  if (!input) throw new UsageError("missing -i <peft-dir>");
  if (!out) throw new UsageError("missing -o <file.safetensors | dir>");
  const dtype = values.dtype === undefined ? undefined : parseFloatDType(values.dtype);
  if (values.dtype !== undefined && !dtype) {
    throw new UsageError(`-t ${values.dtype}: the dtype must be float16, bfloat16 or float32`);
  }

  const started = performance.now();
  const base = values.base === undefined ? undefined : readBaseModel(values.base);
  const adapter = readPeftAdapter(input);
  const output = resolveOutput(out, adapter.name);
  const progress = new Progress();
  const summary = await convertPeftAdapter(adapter, {
    output,
    dtype,
    base,
    skipUnsupported: values["skip-unsupported"],
    onWarning: (m) => printErr(`warning: ${m}`),
    onProgress: (written, total) => progress.update(written, total),
  });
  progress.done();
  const seconds = (performance.now() - started) / 1000;
  console.log(
    `${basename(output)}: ${summary.rows} rows, modules ${describeModules(summary.modules)}, ` +
      `${summary.layers} layers, rank ${summary.ranks.join("/")}, ${floatDTypeName(summary.dtype)}, ` +
      `${formatBytes(summary.bytes)} (${summary.bytes} bytes) in ${seconds.toFixed(2)} s`,
  );
  if (values.verbose) printErr(`source sha256 ${summary.sourceSha256}; written to ${output}`);
  return 0;
}

const HF_NAME_OF = new Map(Object.entries(HF_MODULES).map(([hf, trt]) => [trt as ModuleName, hf]));

function describeModules(modules: readonly ModuleName[]): string {
  return modules.map((m) => `${HF_NAME_OF.get(m) ?? m}->${m}`).join(" ");
}

/** A percentage on stderr: rewritten in place on a terminal, a line per quarter otherwise. */
class Progress {
  private shown = 0;
  private active = false;

  update(written: number, total: number): void {
    if (total < PROGRESS_MIN_BYTES) return;
    const percent = Math.floor((100 * written) / total);
    if (process.stderr.isTTY) {
      if (percent !== this.shown || !this.active) process.stderr.write(`\rconverting: ${percent}%`);
      this.shown = percent;
      this.active = true;
    } else if (Math.floor(percent / 25) > Math.floor(this.shown / 25)) {
      printErr(`converting: ${percent}%`);
      this.shown = percent;
    }
  }

  done(): void {
    if (this.active) process.stderr.write("\n");
  }
}
