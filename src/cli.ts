#!/usr/bin/env bun
import { closestName, printErr, UsageError } from "./commands/args.ts";
/**
 * multilora's command line: one entry point, one module per command under src/commands/.
 */
import { runCheck } from "./commands/check.ts";
import { runDemoModel } from "./commands/demo-model.ts";
import { runExtract } from "./commands/extract.ts";
import { runGenerate } from "./commands/generate.ts";
import { runGrammar } from "./commands/grammar.ts";
import { runInspect } from "./commands/inspect.ts";
import { runServe } from "./commands/serve.ts";
import { MultiloraError } from "./errors.ts";
import { VERSION } from "./version.ts";

const HELP = `multilora ${VERSION}: one base model, many LoRA adapters.

Usage: multilora <command> [options]

Commands:
  serve      the OpenAI-compatible server: one base model, every adapter in a LoRA dir
  check      start the stack as serve does and self-test it (run it first on a new GPU)
  extract    convert a Hugging Face PEFT adapter to TensorRT-LLM's LoRA format
  inspect    show what an adapter (either format) holds, and whether it is valid
  generate   run a model (and an adapter) on the CPU engine once
  grammar    check a JSON Schema for structured output, and instances against it token by token
  demo-model write the random-weight demo model and its two adapters

Run "multilora <command> --help" for a command's options.`;

const COMMANDS: Record<string, (argv: string[]) => number | Promise<number>> = {
  serve: runServe,
  check: runCheck,
  extract: runExtract,
  inspect: runInspect,
  generate: runGenerate,
  grammar: runGrammar,
  "demo-model": runDemoModel,
};

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "-h" || command === "--help" || command === "help") {
    console.log(HELP);
    return command === undefined ? 2 : 0;
  }
  if (command === "--version" || command === "-V") {
    console.log(VERSION);
    return 0;
  }
  const run = COMMANDS[command];
  try {
    if (!run) {
      const near = closestName(command, Object.keys(COMMANDS));
      throw new UsageError(`unknown command "${command}"${near ? `; did you mean "${near}"?` : ""}`);
    }
    return await run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      printErr(
        `multilora${run ? ` ${command}` : ""}: ${e.message}\nRun "multilora ${run ? `${command} ` : ""}--help" for usage.`,
      );
      return 2;
    }
    if (e instanceof MultiloraError) {
      printErr(`error: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
