/**
 * scripts/check-trtllm-shim.sh (run by the Dockerfile on the built shim) on fake libraries: a C++11-ABI
 * mismatch and an unresolvable dependency fail; a matching build passes. The Dockerfile's RUN lines pass
 * shellcheck.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { haveDebianTool } from "../helpers/debian-tool.ts";

const ROOT = join(import.meta.dir, "../..");
const SCRIPT = join(ROOT, "scripts/check-trtllm-shim.sh");
const work = mkdtempSync(join(tmpdir(), "multilora-shim-check-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const haveShellcheck = haveDebianTool("shellcheck", "--version", "the shellcheck test");
const haveGxx = spawnSync("g++", ["--version"]).status === 0;

function build(name: string, source: string, flags: string[]): string {
  const src = join(work, `${name}.cpp`);
  writeFileSync(src, source);
  const out = join(work, `${name}.so`);
  const r = spawnSync("g++", ["-shared", "-fPIC", src, ...flags, "-o", out], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(r.stderr);
  return out;
}

const DEFINES = "#include <string>\nstd::string trtllm_version(std::string s) { return s; }\n";
const USES =
  '#include <string>\nstd::string trtllm_version(std::string s);\nint shim() { return trtllm_version("x").size(); }\n';

function check(shim: string, lib: string) {
  return spawnSync(SCRIPT, [shim, lib], { encoding: "utf8" });
}

describe.skipIf(!haveGxx)("check-trtllm-shim.sh", () => {
  test("a shim built with the library's string ABI whose libraries resolve passes", () => {
    const lib = build("trtllm-new", DEFINES, ["-D_GLIBCXX_USE_CXX11_ABI=1"]);
    const shim = build("shim-new", USES, ["-D_GLIBCXX_USE_CXX11_ABI=1"]);
    const r = check(shim, lib);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
  });

  test("an ABI mismatch fails loudly", () => {
    const lib = build("trtllm-old", DEFINES, ["-D_GLIBCXX_USE_CXX11_ABI=0"]);
    const shim = build("shim-new2", USES, ["-D_GLIBCXX_USE_CXX11_ABI=1"]);
    const r = check(shim, lib);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("C++ ABI mismatch");
  });

  test("a library ldd cannot find fails", () => {
    const dep = build("libgone", DEFINES, ["-D_GLIBCXX_USE_CXX11_ABI=1"]);
    const lib = build("trtllm-new3", DEFINES, ["-D_GLIBCXX_USE_CXX11_ABI=1"]);
    const shim = build("shim-needs", USES, ["-D_GLIBCXX_USE_CXX11_ABI=1", "-L", work, "-lgone"]);
    rmSync(dep);
    const r = check(shim, lib);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("not found");
  });
});

test.skipIf(!haveShellcheck)("the script and the Dockerfile's RUN lines pass shellcheck", () => {
  expect(spawnSync("shellcheck", ["--severity=style", SCRIPT], { encoding: "utf8" }).stdout).toBe("");
  const runs = readFileSync(join(ROOT, "Dockerfile"), "utf8")
    .replace(/\\\n/g, " ")
    .split("\n")
    .filter((l) => l.startsWith("RUN "))
    .map((l) => l.slice(4));
  expect(runs.length).toBeGreaterThanOrEqual(3);
  const r = spawnSync("shellcheck", ["--severity=style", "--shell=bash", "-"], {
    input: `#!/usr/bin/env bash\n${runs.join("\n")}\n`,
    encoding: "utf8",
  });
  expect(r.stdout).toBe("");
});
