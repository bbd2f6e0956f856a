/**
 * ffi/trtllm/trtllm-locate.cmake (the part of the TensorRT-LLM build that needs no CUDA) on fake TRTLLM_ROOT
 * layouts: the wheel's libs/ found (and RPATH'd) before lib/, headers in include/ or cpp/include, the
 * C++11 ABI read from libtensorrt_llm.so's symbols, and clear errors for what is missing or contradicts.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const LOCATE = join(import.meta.dir, "../../ffi/trtllm/trtllm-locate.cmake");
const work = mkdtempSync(join(tmpdir(), "multilora-cmake-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const haveTools = ["cmake", "g++", "nm"].every((t) => spawnSync(t, ["--version"]).status === 0);

/** A shared library exporting one std::string function, built with the given string ABI. */
function fakeLibrary(path: string, cxx11: boolean): void {
  const built = join(work, `lib-${cxx11 ? 1 : 0}.so`);
  if (!existsSync(built)) compileLibrary(built, cxx11);
  copyFileSync(built, path);
}

function compileLibrary(path: string, cxx11: boolean): void {
  const source = join(work, `lib-${cxx11 ? 1 : 0}.cpp`);
  writeFileSync(source, "#include <string>\nstd::string trtllm_version(std::string s) { return s; }\n");
  const r = spawnSync(
    "g++",
    [`-D_GLIBCXX_USE_CXX11_ABI=${cxx11 ? 1 : 0}`, "-shared", "-fPIC", source, "-o", path],
    { encoding: "utf8" },
  );
  if (r.status !== 0) throw new Error(r.stderr);
}

/** A TRTLLM_ROOT: `libs` or `lib`, headers in `include` or `cpp/include`. */
function fakeRoot(name: string, libDir: string, includeDir: string, cxx11 = true): string {
  const root = join(work, name);
  mkdirSync(join(root, includeDir, "tensorrt_llm/executor"), { recursive: true });
  writeFileSync(join(root, includeDir, "tensorrt_llm/executor/executor.h"), "#pragma once\n");
  mkdirSync(join(root, libDir), { recursive: true });
  fakeLibrary(join(root, libDir, "libtensorrt_llm.so"), cxx11);
  fakeLibrary(join(root, libDir, "libnvinfer_plugin_tensorrt_llm.so"), cxx11);
  return root;
}

/** Configures a project that includes trtllm-locate.cmake and prints what it set. */
function configure(root: string, extra: string[] = []): { status: number; out: string } {
  const project = join(work, `project-${Math.random().toString(36).slice(2)}`);
  mkdirSync(project);
  writeFileSync(
    join(project, "CMakeLists.txt"),
    [
      "cmake_minimum_required(VERSION 3.18)",
      "project(locate NONE)",
      `include("${LOCATE}")`,
      // biome-ignore lint/suspicious/noTemplateCurlyInString: CMake's own ${} variables
      'message(STATUS "RESULT lib_dir=${TRTLLM_LIB_DIR} include=${TRTLLM_INCLUDE_DIR} plugin=${TRTLLM_PLUGIN_LIB} abi=${TRTLLM_CXX11_ABI}")',
    ].join("\n"),
  );
  const r = spawnSync(
    "cmake",
    ["-S", project, "-B", join(project, "build"), `-DTRTLLM_ROOT=${root}`, ...extra],
    {
      encoding: "utf8",
    },
  );
  // CMake wraps its messages: compare with the whitespace folded
  return { status: r.status ?? -1, out: (r.stdout + r.stderr).replace(/\s+/g, " ") };
}

describe.skipIf(!haveTools)("trtllm-locate.cmake", () => {
  test("the wheel's layout: libs/ and include/, RPATH to libs/, the C++11 ABI read from the library", () => {
    const root = fakeRoot("wheel", "libs", "include");
    const { status, out } = configure(root);
    expect(status).toBe(0);
    expect(out).toContain(
      `RESULT lib_dir=${root}/libs include=${root}/include plugin=${root}/libs/libnvinfer_plugin_tensorrt_llm.so abi=ON`,
    );
  });

  test("libs/ wins over lib/; a source build's cpp/include is found", () => {
    const root = fakeRoot("both", "libs", "cpp/include");
    fakeLibrary(join(root, "lib-only.so"), true);
    mkdirSync(join(root, "lib"));
    fakeLibrary(join(root, "lib/libtensorrt_llm.so"), true);
    const { status, out } = configure(root);
    expect(status).toBe(0);
    expect(out).toContain(`RESULT lib_dir=${root}/libs include=${root}/cpp/include`);
  });

  test("lib/ alone still works", () => {
    const root = fakeRoot("source", "lib", "include");
    expect(configure(root).out).toContain(`RESULT lib_dir=${root}/lib `);
  });

  test("the old string ABI is detected, and a contradicting -DUSE_CXX11_ABI is an error", () => {
    const root = fakeRoot("old-abi", "libs", "include", false);
    expect(configure(root).out).toContain("abi=OFF");
    const bad = configure(root, ["-DUSE_CXX11_ABI=ON"]);
    expect(bad.status).not.toBe(0);
    expect(bad.out).toContain("was built with _GLIBCXX_USE_CXX11_ABI=OFF");
  });

  test("a root without the libraries or headers says where it looked", () => {
    const empty = join(work, "empty");
    mkdirSync(join(empty, "include/tensorrt_llm/executor"), { recursive: true });
    writeFileSync(join(empty, "include/tensorrt_llm/executor/executor.h"), "");
    const r = configure(empty);
    expect(r.status).not.toBe(0);
    expect(r.out).toContain(`libtensorrt_llm.so is not in ${empty}/libs (the wheel)`);
    const noHeaders = join(work, "no-headers");
    mkdirSync(noHeaders);
    expect(configure(noHeaders).out).toContain("tensorrt_llm/executor/executor.h is not under");
  });
});
