/** The HTTP app in-process over a fake engine and a model folder's tokenizer and chat template. */
import { loadChatTemplate } from "../../src/engine/chat-template.ts";
import { loadTokenizer } from "../../src/engine/tokenizer.ts";
import { GenerationCore } from "../../src/generation/core.ts";
import { createApp } from "../../src/server/app.ts";
import { type AuthConfig, loadAuth } from "../../src/server/auth.ts";
import { createLogger, Observer } from "../../src/server/observe.ts";
import type { FakeEngine } from "./fake-engine.ts";

export interface FakeAppOptions {
  maxRequests?: number;
  maxPerKey?: number;
  /** Default: no keys. */
  auth?: AuthConfig;
  corsOrigins?: string[];
  /** Where log lines go (at info); default: nowhere. */
  log?: (line: string) => void;
}

export function fakeApp(engine: FakeEngine, modelDir: string, options: FakeAppOptions = {}) {
  const core = new GenerationCore(engine, loadTokenizer(modelDir), loadChatTemplate(modelDir), null, {
    servedNames: ["demo"],
    maxRequests: options.maxRequests ?? 4,
    queueTimeoutMs: 1000,
    requestTimeoutMs: 0,
    maxPerKey: options.maxPerKey,
  });
  const logger = options.log ? createLogger("info", options.log) : createLogger("silent");
  const observer = new Observer(logger, engine, () => []);
  const app = createApp({
    core,
    maxBodyBytes: 1 << 20,
    created: 0,
    observer,
    auth: options.auth ?? loadAuth({ apiKeys: [], keysFile: null, adminKey: null, protectMetrics: false }),
    isReady: () => true,
    corsOrigins: options.corsOrigins,
  });
  return { app, observer, core };
}
