/**
 * Adapter names that try to leave the LoRA dir, sent to a real server running under
 * `strace -f -e trace=%file`: no file outside the model, LoRA and cache dirs is ever touched while it
 * answers them. strace comes from Debian (.ci/run installs it); elsewhere the test skips with a notice.
 */
import { afterAll, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeDemoModel } from "../../src/engine/demo-model.ts";
import { haveDebianTool } from "../helpers/debian-tool.ts";

const ROOT = join(import.meta.dir, "../..");
const haveStrace = haveDebianTool("strace", "-V", "the file-access test of adapter names");

const work = mkdtempSync(join(tmpdir(), "multilora-strace-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const NAMES = [
  "../model/config",
  "../../../../etc/passwd",
  "/etc/passwd",
  "..",
  "...",
  "%2e%2e%2fsecret",
  "..%2fsecret",
  "secret\u0000",
  "demo-all/../../secret",
  "escape",
  "escape-dir",
  "C:\\secret",
  "~/secret",
];

test.skipIf(!haveStrace)(
  "names that try to leave the LoRA dir never make the server touch a file outside its dirs",
  async () => {
    const model = join(work, "model");
    writeDemoModel(model);
    const loras = join(model, "lora");
    const cache = join(work, "cache");
    const outside = join(work, "outside");
    mkdirSync(outside);
    writeFileSync(join(outside, "secret.safetensors"), "not an adapter");
    writeFileSync(join(work, "secret.safetensors"), "not an adapter");
    // Links inside the LoRA dir that lead out: the server may look at the link, never at its target.
    symlinkSync(join(outside, "secret.safetensors"), join(loras, "escape.safetensors"));
    mkdirSync(join(outside, "dir"));
    writeFileSync(join(outside, "dir", "adapter_config.json"), "{}");
    symlinkSync(join(outside, "dir"), join(loras, "escape-dir"));

    const trace = join(work, "trace");
    const port = 20000 + Math.floor(Math.random() * 30000);
    const args = [
      "serve",
      model,
      loras,
      "--port",
      String(port),
      "--host",
      "127.0.0.1",
      "--cache-dir",
      cache,
      "--threads",
      "1",
    ];
    const child = Bun.spawn(
      [
        "strace",
        "-f",
        "-qq",
        "-s",
        "4096",
        "-e",
        "trace=%file",
        "-o",
        trace,
        process.execPath,
        join(ROOT, "src/cli.ts"),
        ...args,
      ],
      {
        stdout: "ignore",
        stderr: "pipe",
      },
    );
    const url = `http://127.0.0.1:${port}`;
    let up = false;
    for (let i = 0; i < 400 && !up; i++) {
      up = await fetch(`${url}/v1/health/ready`).then(
        (r) => r.ok,
        () => false,
      );
      if (!up) await new Promise((r) => setTimeout(r, 50));
    }
    expect(up).toBe(true);
    const mark = statSync(trace).size;

    const statuses: number[] = [];
    for (const name of NAMES) {
      for (const body of [{ lora_model: name }, { model: name }]) {
        const r = await fetch(`${url}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "llama", prompt: [1], max_tokens: 1, ...body }),
        });
        statuses.push(r.status);
        await r.text();
      }
      for (const route of [
        `/v1/lora/adapters/${encodeURIComponent(name)}/load`,
        `/v1/lora/adapters/${encodeURIComponent(name)}/validate`,
      ]) {
        const r = await fetch(`${url}${route}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: "{}",
        });
        statuses.push(r.status);
        await r.text();
      }
    }
    // Stop the server (strace's child); strace exits with it.
    spawnSync("pkill", ["-TERM", "-P", String(child.pid)]);
    await child.exited;

    expect(statuses.filter((s) => s !== 400 && s !== 404)).toEqual([]);
    const lines = readFileSync(trace, "utf8").slice(mark).split("\n");
    const touched = new Set<string>();
    for (const line of lines) {
      // Only what the process did while answering: stop at the shutdown.
      if (line.includes("SIGTERM")) break;
      // The path a call acts on is its first string; later ones are results (readlink's target).
      const m = /"((?:[^"\\]|\\.)*)"/.exec(line);
      if (m) touched.add(m[1] as string);
    }
    const allowed = [model, cache, "/proc/self/", ""];
    const outsideDirs = [...touched].filter(
      (p) => !allowed.some((root) => (root === "" ? p === "" : p.startsWith(root))),
    );
    expect(outsideDirs).toEqual([]);
    expect([...touched].some((p) => p.includes("secret") && !p.startsWith(loras))).toBe(false);
  },
  60_000,
);
