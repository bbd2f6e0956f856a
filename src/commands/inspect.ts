/**
 * `multilora inspect <file | dir> [--json] [--base dir]`: what an adapter holds, in either format.
 * Exits 0 when the adapter is valid, 1 when it is not (the report says why).
 */
import { readBaseModel } from "../formats/model-config.ts";
import { type AdapterReport, inspectAdapter } from "../lora/inspect.ts";
import { formatBytes, parseCommandArgs, UsageError } from "./args.ts";

export const INSPECT_HELP = `Usage: multilora inspect <adapter.safetensors | peft-dir> [options]

Shows what a LoRA adapter holds: a TensorRT-LLM file (weights + config) or a PEFT folder.

Options:
      --json          print the report as JSON
      --base <dir>    also check it against a Hugging Face model or TensorRT-LLM engine config.json
  -h, --help          show this help`;

export function runInspect(argv: string[]): number {
  const { values, positionals } = parseCommandArgs(argv, {
    json: { type: "boolean" },
    base: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(INSPECT_HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError("give exactly one adapter file or folder");
  const base = values.base === undefined ? undefined : readBaseModel(values.base);
  const report = inspectAdapter(positionals[0] as string, base);
  console.log(values.json ? JSON.stringify(report, null, 2) : formatReport(report));
  return report.valid ? 0 : 1;
}

export function formatReport(r: AdapterReport): string {
  const lines = [
    `${r.path}`,
    `  format:   ${r.format === "peft" ? "Hugging Face PEFT" : "TensorRT-LLM LoRA"}`,
    `  valid:    ${r.valid ? "yes" : "no"}`,
  ];
  if (r.rows > 0) {
    lines.push(
      `  dtype:    ${r.dtype}`,
      `  bytes:    ${formatBytes(r.bytes)} (${r.bytes})`,
      `  rows:     ${r.rows} (${r.layers} layers, rank ${r.ranks.join("/")})`,
    );
    if (r.scale) lines.push(`  scale:    ${r.scale}`);
    if (r.baseModel) lines.push(`  base:     ${r.baseModel}`);
    lines.push("  modules:");
    for (const m of r.modules) {
      const name = m.hfModule ? `${m.hfModule} -> ${m.module}` : m.module;
      const scale = m.scales ? `, scale ${m.scales.join("/")}` : "";
      lines.push(`    ${name.padEnd(26)} ${m.layers}, rank ${m.ranks.join("/")}${scale}`);
    }
  }
  for (const p of r.problems) lines.push(`  problem:  ${p.replaceAll("\n", "\n            ")}`);
  for (const w of r.warnings) lines.push(`  warning:  ${w}`);
  return lines.join("\n");
}
