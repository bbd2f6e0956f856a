/**
 * `multilora serve`'s settings, each declared once in SERVE_SETTINGS: its type and default (a valibot
 * schema), how a flag's text becomes its value, its environment variable, and its line in --help. The
 * settings schema, the --help text, the flag parser and the keys `--config file.json` accepts all come
 * from that table, so a new setting is one entry.
 *
 * Precedence: flags over --config over environment variables over defaults.
 */
import { type ParseArgsConfig, parseArgs } from "node:util";
import * as v from "valibot";
import { listProblems, MultiloraError } from "../errors.ts";
import { describeIssues, readJson } from "../formats/json-file.ts";
import { closestName, parseCommandArgs, UsageError } from "./args.ts";

/**
 * How the command line gives a setting: `number`, `string`, `boolean` (a flag without a value), `list`
 * (repeatable, each value split at commas), `whole` (repeatable, each value taken whole, commas included:
 * API keys) or `positional` (an argument, in table order).
 */
type Read = "number" | "string" | "boolean" | "list" | "whole" | "positional";

/** Where a setting appears in --help. */
type Group = "general" | "trtllm" | "security";

interface Setting {
  /** Type, constraints and default (every setting has one: `v.optional(..., default)`). */
  schema: v.GenericSchema;
  read: Read;
  group: Group;
  /** What it does, for --help. */
  help: string;
  /** The value's placeholder in --help, e.g. `<n>`. */
  arg?: string;
  /** The default as --help shows it, where the schema's (null, []) says too little. */
  shown?: string;
  /** Environment variable read when neither a flag nor --config sets it. */
  env?: string;
}

const Positive = v.pipe(v.number(), v.integer(), v.minValue(1));
const NonNegative = v.pipe(v.number(), v.minValue(0));
const Megabytes = v.pipe(v.number(), v.gtValue(0));
const Fraction = v.pipe(v.number(), v.gtValue(0), v.maxValue(1));
const Key = v.pipe(v.string(), v.minLength(8));

const BACKENDS = ["auto", "cpu", "trtllm"] as const;
const ON_OFF = ["on", "off"] as const;
const LOG_LEVELS = ["debug", "info", "warn", "error", "silent"] as const;

/** Every setting of `multilora serve`, in --help and --print-config order within each group. */
export const SERVE_SETTINGS = {
  "model-dir": {
    schema: v.optional(v.nullable(v.string()), null),
    read: "positional",
    group: "general",
    help: "a Hugging Face checkpoint dir, or a trtllm-build engine dir",
    shown: "the demo model and its two adapters, generated once into the cache dir",
  },
  "lora-dir": {
    schema: v.optional(v.nullable(v.string()), null),
    read: "positional",
    group: "general",
    help: "every adapter in it is served: <name>.safetensors (TensorRT-LLM format) and PEFT folders",
    shown: "none; the demo's with the demo model",
  },
  host: {
    schema: v.optional(v.string(), "127.0.0.1"),
    read: "string",
    group: "general",
    help: "address to listen on (0.0.0.0: every interface; then set --api-key)",
    arg: "<addr>",
  },
  port: {
    schema: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(65535)), 3000),
    read: "number",
    group: "general",
    help: "port to listen on (0: any free one)",
    arg: "<n>",
    env: "PORT",
  },
  "served-model-name": {
    schema: v.optional(v.array(v.string()), []),
    read: "list",
    group: "general",
    help: "names the base model answers to",
    arg: "<name>",
    shown: "folder name, model_type",
  },
  "max-batch": {
    schema: v.optional(v.nullable(Positive), null),
    read: "number",
    group: "general",
    help: "sequences decoded together",
    arg: "<n>",
    shown: "8; TensorRT-LLM: the engine's max_batch_size",
  },
  "max-seq-len": {
    schema: v.optional(v.nullable(Positive), null),
    read: "number",
    group: "general",
    help: "prompt + completion tokens",
    arg: "<n>",
    shown: "min(4096, the model's)",
  },
  "kv-cache-mb": {
    schema: v.optional(v.nullable(Positive), null),
    read: "number",
    group: "general",
    help: "KV cache budget (CPU engine: running sequences, and the blocks kept for prefix reuse in the room they leave)",
    arg: "<n>",
    shown: "max-batch full sequences",
  },
  threads: {
    schema: v.optional(v.nullable(Positive), null),
    read: "number",
    group: "general",
    help: "compute threads",
    arg: "<n>",
    shown: "every core",
  },
  "prefill-chunk": {
    schema: v.optional(Positive, 256),
    read: "number",
    group: "general",
    help: "prompt tokens per step",
    arg: "<n>",
  },
  "kv-cache-reuse": {
    schema: v.optional(v.picklist(ON_OFF), "on"),
    read: "string",
    group: "general",
    help: "reuse the KV blocks of a prompt prefix computed before (safe with adapters: blocks are keyed by adapter version and lora_scale)",
    arg: ON_OFF.join("|"),
  },
  "kv-block-tokens": {
    schema: v.optional(v.pipe(Positive, v.maxValue(4096)), 32),
    read: "number",
    group: "general",
    help: "positions per reused KV block (CPU engine; TensorRT-LLM's come from the engine build)",
    arg: "<n>",
  },
  "max-lora-rank": {
    schema: v.optional(Positive, 64),
    read: "number",
    group: "general",
    help: "largest adapter rank accepted; also sizes the pin limit",
    arg: "<n>",
  },
  "max-loras": {
    schema: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0)), 0),
    read: "number",
    group: "general",
    help: "most adapters in the engine's cache at once",
    arg: "<n>",
    shown: "0: limited by bytes",
  },
  "lora-cache-mb": {
    schema: v.optional(Megabytes, 256),
    read: "number",
    group: "general",
    help: "adapter cache capacity",
    arg: "<n>",
  },
  "adapter-memory-mb": {
    schema: v.optional(Megabytes, 4096),
    read: "number",
    group: "general",
    help: "host copies of adapter files kept to resend after an eviction; beyond, the least recently used are read again from disk when needed",
    arg: "<n>",
  },
  "max-adapter-mb": {
    schema: v.optional(v.nullable(Megabytes), null),
    read: "number",
    group: "general",
    help: "largest adapter file read, checked from its size and header before it is read (a file holds padded rows, so it may be larger than its place in the cache)",
    arg: "<n>",
    shown: "4 x --lora-cache-mb",
  },
  "converted-cache-mb": {
    schema: v.optional(Megabytes, 4096),
    read: "number",
    group: "general",
    help: "PEFT folders converted into the cache dir; least recently used removed",
    arg: "<n>",
  },
  "allowed-lora-paths": {
    schema: v.optional(v.array(v.string()), []),
    read: "list",
    group: "security",
    help: "dirs besides lora-dir whose adapters POST /v1/load_lora_adapter may name by lora_path (checked with links resolved); the LoRA dir always may",
    arg: "a,b",
  },
  preload: {
    schema: v.optional(v.array(v.string()), []),
    read: "list",
    group: "general",
    help: "adapters loaded at start-up",
    arg: "a,b",
  },
  pin: {
    schema: v.optional(v.array(v.string()), []),
    read: "list",
    group: "general",
    help: "adapters loaded and pinned at start-up",
    arg: "a,b",
  },
  "max-queue": {
    schema: v.optional(Positive, 256),
    read: "number",
    group: "general",
    help: "requests waiting or running before 503",
    arg: "<n>",
  },
  "max-concurrent-per-key": {
    schema: v.optional(v.nullable(v.pipe(v.number(), v.integer(), v.minValue(0))), null),
    read: "number",
    group: "general",
    help: "requests one API key may have waiting or running at once (429 beyond), so one tenant cannot take every place",
    arg: "<n>",
    shown: "half of --max-queue with --api-keys-file, else none; 0: no limit",
  },
  "queue-timeout": {
    schema: v.optional(NonNegative, 60),
    read: "number",
    group: "general",
    help: "longest wait for room in a full adapter cache",
    arg: "<s>",
  },
  "constraint-compile-timeout": {
    schema: v.optional(v.pipe(v.number(), v.gtValue(0)), 2),
    read: "number",
    group: "general",
    help: "longest compilation of one response_format / structured_outputs schema, then a 400",
    arg: "<s>",
  },
  "constraint-cache-mb": {
    schema: v.optional(Megabytes, 256),
    read: "number",
    group: "general",
    help: "memory for compiled output constraints (grammars and their token masks), least recently used out",
    arg: "<mb>",
  },
  "tool-call-format": {
    schema: v.optional(v.picklist(["auto", "hermes", "llama3", "mistral"]), "auto"),
    read: "string",
    group: "general",
    help: "how the model writes tool calls: hermes (<tool_call>), llama3 (JSON, <|python_tag|>), mistral ([TOOL_CALLS]); auto: read from the chat template (ChatML: hermes)",
    arg: "<format>",
  },
  "request-timeout": {
    schema: v.optional(NonNegative, 600),
    read: "number",
    group: "general",
    help: "longest generation, then cut with finish_reason length",
    arg: "<s>",
    shown: "600; 0: none",
  },
  "drain-timeout": {
    schema: v.optional(NonNegative, 30),
    read: "number",
    group: "general",
    help: "on SIGTERM: queued requests get a 503 at once, running ones may finish this long, then end with an error",
    arg: "<s>",
  },
  "max-body-mb": {
    schema: v.optional(Megabytes, 16),
    read: "number",
    group: "general",
    help: "largest request body (413 beyond)",
    arg: "<n>",
  },
  "body-timeout": {
    schema: v.optional(NonNegative, 30),
    read: "number",
    group: "general",
    help: "longest a request body may take to arrive (408 beyond)",
    arg: "<s>",
    shown: "30; 0: none",
  },
  "cache-dir": {
    schema: v.optional(v.nullable(v.string()), null),
    read: "string",
    group: "general",
    help: "converted PEFT adapters and the demo model",
    arg: "<dir>",
    shown: "$XDG_CACHE_HOME/multilora",
  },
  "model-memory": {
    schema: v.optional(v.picklist(["auto", "map", "copy"] as const), "auto"),
    read: "string",
    group: "general",
    help: "model weights read in place from their memory map (map) or copied into the engine's memory as it starts (copy), so that a model file truncated or rewritten in place while serving cannot crash the server; auto maps read-only files (no write permission) and copies the others",
    arg: "auto|map|copy",
  },
  backend: {
    schema: v.optional(v.picklist(BACKENDS), "auto"),
    read: "string",
    group: "general",
    help: "",
    arg: BACKENDS.join("|"),
    shown: "auto: trtllm for a trtllm-build engine dir, cpu for a checkpoint",
  },
  "kv-cache-free-gpu-mem-fraction": {
    schema: v.optional(v.nullable(Fraction), null),
    read: "number",
    group: "trtllm",
    help: "GPU memory left after loading given to the KV cache",
    arg: "<x>",
    shown: "0.9",
  },
  "lora-host-cache-mb": {
    schema: v.optional(Megabytes, 1024),
    read: "number",
    group: "trtllm",
    help: "adapters kept in host memory",
    arg: "<n>",
  },
  "lora-device-cache-percent": {
    schema: v.optional(v.nullable(Fraction), null),
    read: "number",
    group: "trtllm",
    help: "fraction of free GPU memory for adapters",
    arg: "<x>",
    shown: "TensorRT-LLM's",
  },
  "lora-optimal-adapter-size": {
    schema: v.optional(Positive, 8),
    read: "number",
    group: "trtllm",
    help: "adapter rank a cache page is sized for",
    arg: "<n>",
  },
  "lora-max-adapter-size": {
    schema: v.optional(Positive, 64),
    read: "number",
    group: "trtllm",
    help: "largest adapter rank the caches make room for",
    arg: "<n>",
  },
  "trtllm-worker": {
    schema: v.optional(v.nullable(v.string()), null),
    read: "string",
    group: "trtllm",
    help: "executorWorker for multi-GPU engines",
    arg: "<path>",
    shown: "$TRTLLM_ROOT/bin/executorWorker, else the installed tensorrt_llm's",
  },
  "api-key": {
    schema: v.optional(v.array(Key), []),
    read: "whole",
    group: "security",
    help: "required on every route but health, docs and metrics",
    arg: "<key>",
    shown: "none: open",
    env: "MULTILORA_API_KEY",
  },
  "cors-origin": {
    schema: v.optional(v.array(v.string()), []),
    read: "list",
    group: "security",
    help: "origins whose browser pages may call the API (CORS, with preflight; * for any)",
    arg: "a,b",
    shown: "none: no CORS headers",
  },
  "tls-cert": {
    schema: v.optional(v.nullable(v.string()), null),
    read: "string",
    group: "security",
    help: "PEM certificate (chain): serve HTTPS instead of HTTP, with --tls-key",
    arg: "<file>",
  },
  "tls-key": {
    schema: v.optional(v.nullable(v.string()), null),
    read: "string",
    group: "security",
    help: "PEM private key of --tls-cert",
    arg: "<file>",
  },
  "api-keys-file": {
    schema: v.optional(v.nullable(v.string()), null),
    read: "string",
    group: "security",
    help: '{"keys": [{"key", "name", "adapters": [...] | "*"}]}: per-tenant keys',
    arg: "<json>",
  },
  "admin-key": {
    schema: v.optional(v.nullable(Key), null),
    read: "string",
    group: "security",
    help: "guards the adapter admin routes",
    arg: "<key>",
    env: "MULTILORA_ADMIN_KEY",
    shown: "none: loopback clients only",
  },
  "protect-metrics": {
    schema: v.optional(v.boolean(), false),
    read: "boolean",
    group: "security",
    help: "/metrics needs a key too",
  },
  "open-admin-routes": {
    schema: v.optional(v.boolean(), false),
    read: "boolean",
    group: "security",
    help: "with --api-keys-file: /metrics stays open and the admin routes answer loopback clients without --admin-key (by default both need the admin key)",
  },
  "log-level": {
    schema: v.optional(v.picklist(LOG_LEVELS), "info"),
    read: "string",
    group: "general",
    help: `${LOG_LEVELS.join(" | ")}: one JSON line per request at info`,
    arg: "<level>",
  },
} satisfies Record<string, Setting>;

type SettingName = keyof typeof SERVE_SETTINGS;
const SETTINGS = Object.entries(SERVE_SETTINGS) as [SettingName, Setting][];
const POSITIONALS = SETTINGS.filter(([, s]) => s.read === "positional").map(([name]) => name);
const USAGE = `multilora serve ${POSITIONALS.map((p) => `[${p}]`).join(" ")} [options]`;

/** Every setting, its type and default: flags, `--config file.json` and `--print-config` share it. */
export const ServeConfigSchema = v.object(
  Object.fromEntries(SETTINGS.map(([name, s]) => [name, s.schema])) as {
    [K in SettingName]: (typeof SERVE_SETTINGS)[K]["schema"];
  },
);

export type ServeConfig = v.InferOutput<typeof ServeConfigSchema>;

/** The flags that act on the command rather than set something. */
const COMMAND_FLAGS = {
  config: { type: "string", arg: "<file.json>", help: "settings from a file (flags win)" },
  "print-config": { type: "boolean", help: "print the merged settings and exit" },
  help: { type: "boolean", short: "h", help: "show this help" },
} as const;

type FlagTable = NonNullable<ParseArgsConfig["options"]>;

const FLAGS: FlagTable = {
  ...Object.fromEntries(
    SETTINGS.filter(([, s]) => s.read !== "positional").map(([name, s]) => [
      name,
      s.read === "boolean"
        ? { type: "boolean" as const }
        : { type: "string" as const, multiple: s.read === "list" || s.read === "whole" },
    ]),
  ),
  ...COMMAND_FLAGS,
};

// --help layout: flags from column 0, their descriptions from DESCRIPTION_COLUMN, wrapped at HELP_WIDTH.
const DESCRIPTION_COLUMN = 33;
const HELP_WIDTH = 110;

const GROUP_HEADINGS: Record<Group, string | null> = {
  general: null,
  trtllm: "TensorRT-LLM only (each defaults to TensorRT-LLM's own; --max-batch and --max-loras apply too):",
  security: "Security:",
};

/** One --help entry: the flag (or argument), then its description, wrapped under the description column. */
function helpEntry(head: string, description: string): string {
  const lines: string[] = [];
  let line = head.length < DESCRIPTION_COLUMN ? head.padEnd(DESCRIPTION_COLUMN) : `${head}  `;
  let first = true;
  for (const word of description.split(" ").filter((w) => w.length > 0)) {
    if (!first && line.length + 1 + word.length > HELP_WIDTH) {
      lines.push(line);
      line = " ".repeat(DESCRIPTION_COLUMN) + word;
    } else line = first ? line + word : `${line} ${word}`;
    first = false;
  }
  lines.push(line);
  return lines.map((l) => l.trimEnd()).join("\n");
}

/** A setting's description in --help: what it does, whether it repeats, and its default in brackets. */
function describe(s: Setting): string {
  const value: unknown = v.getDefault(s.schema);
  const shown =
    s.shown ??
    (value === null || value === false || (Array.isArray(value) && value.length === 0) ? "" : value);
  const fallback = [s.env && `$${s.env}`, shown].filter((part) => part !== "" && part !== undefined);
  return [
    s.help,
    s.read === "list" || s.read === "whole" ? "(repeatable)" : "",
    fallback.length > 0 ? `[${fallback.join(", else ")}]` : "",
  ]
    .filter((part) => part.length > 0)
    .join(" ");
}

function settingHelp([name, s]: [SettingName, Setting]): string {
  if (s.read === "positional") return helpEntry(`      ${name}`, describe(s));
  return helpEntry(`      --${name}${s.arg ? ` ${s.arg}` : ""}`, describe(s));
}

function groupHelp(group: Group): string[] {
  const heading = GROUP_HEADINGS[group];
  const entries = SETTINGS.filter(([, s]) => s.group === group && s.read !== "positional").map(settingHelp);
  return heading ? [`    ${heading}`, ...entries] : entries;
}

export const SERVE_HELP = [
  `Usage: ${USAGE}`,
  "",
  "Serves one base model and every LoRA adapter in lora-dir through an OpenAI-compatible API.",
  "",
  "Arguments (defaults in brackets; --config file.json sets them too):",
  ...SETTINGS.filter(([, s]) => s.read === "positional").map(settingHelp),
  "",
  "Options (defaults in brackets; --config file.json sets the same names):",
  ...groupHelp("general"),
  ...groupHelp("trtllm"),
  ...groupHelp("security"),
  "",
  ...Object.entries(COMMAND_FLAGS).map(([name, flag]) =>
    helpEntry(
      `${"short" in flag ? `  -${flag.short}, ` : "      "}--${name}${"arg" in flag ? ` ${flag.arg}` : ""}`,
      flag.help,
    ),
  ),
].join("\n");

/** Unknown flags, each with the closest known one when it looks like a typo. */
function rejectUnknownFlags(argv: string[]): void {
  const { tokens } = parseArgs({
    args: argv,
    options: FLAGS,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  for (const token of tokens) {
    if (token.kind !== "option" || Object.hasOwn(FLAGS, token.name)) continue;
    const name = token.name;
    if ((POSITIONALS as string[]).includes(name))
      throw new UsageError(`${token.rawName}: ${name} is given as an argument, not a flag: ${USAGE}`);
    const near = closestName(name, Object.keys(FLAGS));
    throw new UsageError(`unknown option ${token.rawName}${near ? `; did you mean --${near}?` : ""}`);
  }
}

/** A flag's or environment variable's text as a setting's value; `source` names it in errors. */
function readText(read: Read, texts: string[], source: string): unknown {
  const last = texts[texts.length - 1] as string;
  switch (read) {
    case "number": {
      const n = Number(last);
      if (last.trim() === "" || !Number.isFinite(n))
        throw new UsageError(`${source} ${last}: expected a number`);
      return n;
    }
    case "boolean":
      if (last === "true" || last === "1") return true;
      if (last === "false" || last === "0") return false;
      throw new UsageError(`${source} ${last}: expected true or false`);
    case "list":
      return texts
        .flatMap((t) => t.split(","))
        .map((t) => t.trim())
        .filter((t) => t.length > 0);
    case "whole":
      return texts;
    default:
      return last;
  }
}

/** The settings object in a --config file; every key must be a setting. */
function readConfigFile(path: string): Record<string, unknown> {
  const settings = readJson(path);
  if (typeof settings !== "object" || settings === null || Array.isArray(settings)) {
    throw new MultiloraError(`${path}: must hold a JSON object of settings`, { code: "invalid_config" });
  }
  const unknown = Object.keys(settings).filter((key) => !Object.hasOwn(SERVE_SETTINGS, key));
  if (unknown.length > 0) {
    const problems = unknown.map((key) => {
      const near = closestName(key, Object.keys(SERVE_SETTINGS));
      return `"${key}"${near ? `: did you mean "${near}"?` : ""}`;
    });
    throw new MultiloraError(
      listProblems(`${path} has keys that are not settings of multilora serve (see --help):`, problems),
      { code: "invalid_config" },
    );
  }
  return settings as Record<string, unknown>;
}

/** Flags over --config over env over defaults; `-h/--help` and `--print-config` are reported, not acted on. */
export function serveConfig(argv: string[]): { config: ServeConfig; print: boolean; help: boolean } {
  rejectUnknownFlags(argv);
  const { values, positionals } = parseCommandArgs(argv, FLAGS);
  if (positionals.length > POSITIONALS.length)
    throw new UsageError(`unexpected argument "${positionals[POSITIONALS.length]}"`);
  const configFile = typeof values.config === "string" ? values.config : undefined;
  const merged: Record<string, unknown> = {};
  const origin: Record<string, string> = {};
  const set = (name: string, value: unknown, from: string) => {
    merged[name] = value;
    origin[name] = from;
  };
  for (const [name, s] of SETTINGS) {
    const text = s.env ? process.env[s.env] : undefined;
    if (s.env && text) set(name, readText(s.read, [text], `$${s.env}`), `$${s.env}`);
  }
  if (configFile)
    for (const [name, value] of Object.entries(readConfigFile(configFile))) set(name, value, configFile);
  for (const [name, s] of SETTINGS) {
    if (s.read === "positional") {
      const argument = positionals[POSITIONALS.indexOf(name)];
      if (argument !== undefined) set(name, argument, "argument");
      continue;
    }
    const value = values[name];
    if (value === undefined) continue;
    const texts = (Array.isArray(value) ? value : [value]).map(String);
    set(name, s.read === "boolean" ? value : readText(s.read, texts, `--${name}`), `--${name}`);
  }
  const result = v.safeParse(ServeConfigSchema, merged);
  if (!result.success) {
    const problems = describeIssues(result.issues).map((problem, i) => {
      const key = result.issues[i]?.path?.[0]?.key;
      return typeof key === "string" && origin[key] ? `${problem} (from ${origin[key]})` : problem;
    });
    throw new MultiloraError(listProblems("the settings are not valid:", problems), {
      code: "invalid_config",
    });
  }
  return { config: result.output, print: values["print-config"] === true, help: values.help === true };
}
