import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { trimCache } from "../../src/lora/registry.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-registry-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

test("the converted-adapter cache keeps its size under the cap, removing the least recently used first", () => {
  const dir = join(work, "peft");
  mkdirSync(dir);
  ["a", "b", "c", "d"].forEach((name, i) => {
    const path = join(dir, `${name}.safetensors`);
    writeFileSync(path, new Uint8Array(1000));
    utimesSync(path, new Date(1000 * (i + 1)), new Date(1000 * (i + 1)));
  });
  // a is the oldest but is the file just written: it stays; b and c go.
  trimCache(dir, 2000, join(dir, "a.safetensors"));
  expect(readdirSync(dir).sort()).toEqual(["a.safetensors", "d.safetensors"]);
});
