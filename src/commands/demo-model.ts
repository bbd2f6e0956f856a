/** `multilora demo-model <dir> [--preset tiny|small] [--seed N]`: writes the demo model and its adapters. */
import { DEMO_PRESETS, type DemoPreset, writeDemoModel } from "../engine/demo-model.ts";
import { parseCommandArgs, UsageError } from "./args.ts";

export const DEMO_MODEL_HELP = `Usage: multilora demo-model <dir> [options]

Writes a random-weight Llama checkpoint (config.json, model.safetensors, a byte-level BPE tokenizer.json,
tokenizer_config.json with a ChatML template) and two LoRA adapters in TensorRT-LLM's format under
<dir>/lora/. The same seed gives the same bytes.

Options:
      --preset <name>   tiny (default) or small
      --seed <n>        default 1
  -h, --help            show this help`;

export function runDemoModel(argv: string[]): number {
  const { values, positionals } = parseCommandArgs(argv, {
    preset: { type: "string" },
    seed: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(DEMO_MODEL_HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError("give the folder to write the demo model into");
  const preset = values.preset ?? "tiny";
  if (!Object.hasOwn(DEMO_PRESETS, preset))
    throw new UsageError(`--preset ${preset}: expected one of ${Object.keys(DEMO_PRESETS).join(", ")}`);
  const seed = values.seed === undefined ? 1 : Number(values.seed);
  if (!Number.isSafeInteger(seed) || seed < 0)
    throw new UsageError(`--seed ${values.seed}: expected a non-negative integer`);
  const demo = writeDemoModel(positionals[0] as string, { preset: preset as DemoPreset, seed });
  console.log(
    `${demo.dir}: demo model (${preset}, seed ${seed}), adapters ${demo.adapters.join(", ")} in ${demo.loraDir}`,
  );
  return 0;
}
