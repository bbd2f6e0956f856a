/** Starting the real server on a loopback port over the demo model, for end-to-end tests. */
import { cpSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import * as v from "valibot";
import { type RunningServer, ServeConfigSchema, startServer } from "../../src/commands/serve.ts";
import { writeDemoModel } from "../../src/engine/demo-model.ts";

export interface TestServer {
  server: RunningServer;
  client: OpenAI;
  work: string;
  modelDir: string;
  loraDir: string;
  close(): Promise<void>;
}

/** The demo model in a temp dir, its adapters copied into a LoRA dir the test may change. */
export async function startTestServer(
  settings: Record<string, unknown> = {},
  /** Changes the model folder before the server reads it (another chat template, say). */
  prepare?: (modelDir: string) => void,
): Promise<TestServer> {
  const work = mkdtempSync(join(tmpdir(), "multilora-server-"));
  const modelDir = join(work, "model");
  writeDemoModel(modelDir, { seed: 3 });
  prepare?.(modelDir);
  const loraDir = join(work, "loras");
  mkdirSync(loraDir);
  for (const name of ["demo-attention", "demo-all"]) {
    cpSync(join(modelDir, "lora", `${name}.safetensors`), join(loraDir, `${name}.safetensors`));
  }
  const config = v.parse(ServeConfigSchema, {
    "model-dir": modelDir,
    "lora-dir": loraDir,
    host: "127.0.0.1",
    port: 0,
    threads: 2,
    "cache-dir": join(work, "cache"),
    "log-level": "silent",
    ...settings,
  });
  const server = await startServer(config, () => {});
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  return {
    server,
    client,
    work,
    modelDir,
    loraDir,
    close: async () => {
      await server.stop();
      rmSync(work, { recursive: true, force: true });
    },
  };
}

/** POSTs JSON and returns status and parsed body. */
export async function post(
  url: string,
  body: unknown,
): Promise<{ status: number; body: { error: Record<string, unknown> } & Record<string, unknown> }> {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  let parsed: unknown = { error: { message: text } };
  try {
    parsed = JSON.parse(text);
  } catch {}
  return {
    status: response.status,
    body: parsed as { error: Record<string, unknown> } & Record<string, unknown>,
  };
}
