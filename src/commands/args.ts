/**
 * Command-line parsing shared by the commands: node:util's parseArgs, with usage errors that say what
 * was wrong and point at --help.
 */
import { type ParseArgsConfig, parseArgs } from "node:util";
import { MultiloraError } from "../errors.ts";

/** A usage mistake: the CLI prints it with a pointer to --help and exits with status 2. */
export class UsageError extends MultiloraError {
  constructor(message: string) {
    super(message, { code: "usage" });
    this.name = "UsageError";
  }
}

export function parseCommandArgs<const O extends NonNullable<ParseArgsConfig["options"]>>(
  argv: string[],
  options: O,
) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** Writes to stderr (progress, warnings, errors) without touching stdout, which carries results. */
export function printErr(line: string): void {
  process.stderr.write(`${line}\n`);
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}
