/** The two real, trained PEFT adapters in ../shared/fixtures, converted and checked value by value. */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { FloatDType } from "../../src/formats/dtypes.ts";
import { readBaseModel } from "../../src/formats/model-config.ts";
import { readSafetensors } from "../../src/formats/safetensors-reader.ts";
import { convertPeftAdapter } from "../../src/lora/convert.ts";
import { readPeftAdapter } from "../../src/lora/peft-adapter.ts";
import { expectedRow, rowBits } from "../helpers/expected.ts";
import { FIXTURES, HAVE_FIXTURES, QWEN25_05B, SMOLLM2_360M } from "../helpers/fixtures.ts";
import { writeHfConfig } from "../helpers/peft.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-fixtures-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const ADAPTERS = [
  {
    folder: "smollm2-360m-instruct-lora-r8",
    dims: SMOLLM2_360M,
    rows: 64,
    baseModel: "HuggingFaceTB/SmolLM2-360M-Instruct",
    sha256: "f0a3e9097f1b09bf1c5b116e9ade7d8cb8160c7727f449cb21b9ba8cacdacfcd",
  },
  {
    folder: "qwen2.5-0.5b-instruct-lora-r8",
    dims: QWEN25_05B,
    rows: 48,
    baseModel: "Qwen/Qwen2.5-0.5B-Instruct",
    sha256: "b3e379dec9780e0f380cf34014a0b2c0e166b1f57679a46d28639c3938607cce",
  },
];
const MODULE_NAME: Record<number, string> = { 1: "q_proj", 3: "v_proj" };

describe.skipIf(!HAVE_FIXTURES)("real PEFT adapters", () => {
  for (const fixture of ADAPTERS) {
    for (const dtype of ["F32", "BF16", "F16"] as FloatDType[]) {
      test(`${fixture.folder} to ${dtype}: every row equals A and 2 x B from the PEFT file, checked against the base dims`, async () => {
        const dir = join(FIXTURES, fixture.folder);
        const base = readBaseModel(writeHfConfig(join(work, `${fixture.folder}-base`), fixture.dims));
        const output = join(work, `${fixture.folder}-${dtype}.safetensors`);
        const summary = await convertPeftAdapter(readPeftAdapter(dir), { output, dtype, base });
        expect(summary).toMatchObject({
          rows: fixture.rows,
          layers: fixture.dims.layers,
          ranks: [8],
          sourceSha256: fixture.sha256,
        });

        const source = readSafetensors(join(dir, "adapter_model.safetensors"));
        const out = readSafetensors(output);
        const config = out.view("config") as Int32Array;
        const weights = out.view("weights") as Float32Array | Uint16Array;
        const rowLength = out.info("weights").shape[1] as number;
        // v_proj is narrower than q_proj: R is 8 x (hidden + hidden), q's row.
        expect(rowLength).toBe(8 * 2 * fixture.dims.hidden);
        for (let i = 0; i < fixture.rows; i++) {
          const [id, layer, r] = [config[3 * i], config[3 * i + 1], config[3 * i + 2]] as [
            number,
            number,
            number,
          ];
          expect(r).toBe(8);
          const prefix = `base_model.model.model.layers.${layer}.self_attn.${MODULE_NAME[id]}`;
          const a = source.view(`${prefix}.lora_A.weight`) as Float32Array;
          const b = source.view(`${prefix}.lora_B.weight`) as Float32Array;
          expect(rowBits(weights, i, rowLength)).toEqual(expectedRow(a, b, 16 / 8, dtype, rowLength));
        }
        expect(out.metadata).toMatchObject({
          base_model_name_or_path: fixture.baseModel,
          source: fixture.folder,
          r: "8",
          lora_alpha: "16",
        });
      });
    }
  }

  test("an adapter checked against the other model's dims is refused with each mismatch named", async () => {
    const base = readBaseModel(writeHfConfig(join(work, "smol-base"), SMOLLM2_360M));
    const output = join(work, "wrong.safetensors");
    const attempt = convertPeftAdapter(readPeftAdapter(join(FIXTURES, "qwen2.5-0.5b-instruct-lora-r8")), {
      output,
      base,
    });
    const message = await attempt.catch((e: Error) => e.message);
    expect(message).toContain("attn_q (layers 0-23): lora_A is [8, 896] but the model's input width is 960");
    expect(message).toContain("attn_v (layers 0-23): lora_B is [128, 8] but the model's output width is 320");
    expect(await Bun.file(output).exists()).toBe(false);
  });
});
