import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, statSync, unlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AdapterDir } from "../../src/lora/adapter-dir.ts";

const work = mkdtempSync(join(tmpdir(), "multilora-adapter-dir-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Long ago, so the listing trusts these mtimes to show the next change. */
const LONG_AGO = new Date(1_000_000_000);

function freshDir(name: string, files: string[]): string {
  const dir = join(work, name);
  mkdirSync(dir);
  for (const f of files) writeFileSync(join(dir, f), "not parsed by the listing");
  utimesSync(dir, LONG_AGO, LONG_AGO);
  return dir;
}

const names = (d: AdapterDir) => d.list().map((e) => e.name);

test("the listing stays in memory while the dir is unchanged; has() answers from it", () => {
  const dir = new AdapterDir(freshDir("unchanged", ["a.safetensors", "b.safetensors"]));
  expect(names(dir)).toEqual(["a", "b"]);
  expect(dir.list()).toBe(dir.list());
  expect(dir.has("a")).toBe(true);
  expect(dir.has("c")).toBe(false);
  expect(dir.has("../a")).toBe(false);
  expect(dir.scans).toBe(1);
  dir.close();
});

test("without a watcher, a new file appears at once and a removed one goes (the dir's mtime changed)", () => {
  const path = freshDir("mtime", ["a.safetensors"]);
  const dir = new AdapterDir(path);
  dir.close(); // no watcher from here on: only the mtime check can see changes
  expect(names(dir)).toEqual(["a"]);
  writeFileSync(join(path, "b.safetensors"), "new");
  expect(dir.has("b")).toBe(true);
  expect(names(dir)).toEqual(["a", "b"]);
  unlinkSync(join(path, "a.safetensors"));
  expect(names(dir)).toEqual(["b"]);
  expect(dir.has("a")).toBe(false);
});

test("a PEFT folder filled after it appeared is listed once its config is there (the folder's mtime changed)", () => {
  const path = freshDir("peft", []);
  mkdirSync(join(path, "late"));
  utimesSync(join(path, "late"), LONG_AGO, LONG_AGO);
  utimesSync(path, LONG_AGO, LONG_AGO);
  const dir = new AdapterDir(path);
  dir.close();
  expect(names(dir)).toEqual([]);
  expect(names(dir)).toEqual([]);
  expect(dir.scans).toBe(1);
  const dirMtime = statSync(path, { bigint: true }).mtimeNs;
  writeFileSync(join(path, "late", "adapter_config.json"), "{}");
  expect(statSync(path, { bigint: true }).mtimeNs).toBe(dirMtime); // the dir itself did not change
  expect(dir.list()).toEqual([{ name: "late", format: "peft", path: join(dir.realDir, "late") }]);
});

test("the watcher catches a change that left the dir's mtime as it was", async () => {
  const path = freshDir("watched", ["a.safetensors"]);
  const dir = new AdapterDir(path);
  expect(names(dir)).toEqual(["a"]);
  writeFileSync(join(path, "b.safetensors"), "new");
  utimesSync(path, LONG_AGO, LONG_AGO); // as if nothing happened
  for (let i = 0; i < 100 && !dir.has("b"); i++) await new Promise((r) => setTimeout(r, 20));
  expect(names(dir)).toEqual(["a", "b"]);
  dir.close();
});
