/**
 * Extract benchmark: converting a Llama-3-8B-shaped rank-16 PEFT adapter on all seven modules (hidden 4096,
 * intermediate 14336, 32 layers, 8 kv heads; about 168 MB of f32) to bf16, against a plain copy measured in
 * the same run: the same input files read with the same read calls, and the same number of output bytes
 * written in the same chunk size to a new file. The page cache is warm for both; runs alternate.
 *
 *   bun bench/extract.ts [--runs N]
 *
 * Last line: {"bench":"extract","ratio":R,"target":0.5}, R = copy time / conversion time.
 */
import { spawnSync } from "node:child_process";
import {
  closeSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { readFileBytes } from "../src/formats/safetensors-reader.ts";
import { convertPeftAdapter } from "../src/lora/convert.ts";
import { readPeftAdapter } from "../src/lora/peft-adapter.ts";
import { ALL_SEVEN, writePeftAdapter } from "../tests/helpers/peft.ts";

const { values } = parseArgs({ options: { runs: { type: "string", default: "5" } } });
const runs = Number(values.runs);
const LLAMA3_8B = { hidden: 4096, intermediate: 14336, layers: 32, heads: 32, kvHeads: 8, headDim: 128 };
const CHUNK = 4 << 20; // the converter's output chunk size

const work = mkdtempSync(join(tmpdir(), "multilora-bench-"));
try {
  const dir = join(work, "llama3-8b-r16");
  writePeftAdapter(dir, { dims: LLAMA3_8B, modules: ALL_SEVEN, rank: 16, alpha: 32, dtype: "F32" });
  const inputPath = join(dir, "adapter_model.safetensors");
  const inputBytes = statSync(inputPath).size;
  const output = join(work, "out.safetensors");

  const convert = async () => {
    const adapter = readPeftAdapter(dir);
    return convertPeftAdapter(adapter, { output, dtype: "BF16" });
  };
  const first = await convert(); // also warms the page cache and the JIT
  const outputBytes = first.bytes;

  const copy = () => {
    readFileSync(join(dir, "adapter_config.json"), "utf8");
    const bytes = readFileBytes(inputPath, { shared: true });
    const fd = openSync(output, "w");
    for (let done = 0; done < outputBytes; ) {
      const n = Math.min(CHUNK, outputBytes - done);
      done += writeSync(fd, bytes, done % (bytes.length - CHUNK), n);
    }
    closeSync(fd);
  };
  copy();

  const copyMs: number[] = [];
  const convertMs: number[] = [];
  // Before each timed run (untimed): remove the last output, free the previous runs' 170 MB read buffers
  // (else each run pays the kernel for zeroing fresh pages while memory grows) and flush dirty pages, so
  // that neither side pays for the other's garbage or writeback.
  const settle = () => {
    unlinkSync(output);
    Bun.gc(true);
    spawnSync("sync");
  };
  for (let i = 0; i < runs; i++) {
    settle();
    let t = performance.now();
    copy();
    copyMs.push(performance.now() - t);
    settle();
    t = performance.now();
    await convert();
    convertMs.push(performance.now() - t);
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
  const copyMedian = median(copyMs);
  const convertMedian = median(convertMs);
  const mbps = (ms: number) => (inputBytes / 1e6 / (ms / 1000)).toFixed(0);
  console.log(
    `input ${(inputBytes / 1e6).toFixed(1)} MB f32 -> output ${(outputBytes / 1e6).toFixed(1)} MB bf16, ${runs} runs each`,
  );
  console.log("| what | median ms | input MB/s | runs (ms) |");
  console.log("|---|---|---|---|");
  console.log(
    `| plain copy | ${copyMedian.toFixed(1)} | ${mbps(copyMedian)} | ${copyMs.map((x) => x.toFixed(0)).join(" ")} |`,
  );
  console.log(
    `| extract to bf16 | ${convertMedian.toFixed(1)} | ${mbps(convertMedian)} | ${convertMs.map((x) => x.toFixed(0)).join(" ")} |`,
  );
  console.log(
    JSON.stringify({ bench: "extract", ratio: Number((copyMedian / convertMedian).toFixed(3)), target: 0.5 }),
  );
} finally {
  rmSync(work, { recursive: true, force: true });
}
