/** `multilora serve`'s settings table: flags, --config, env fallbacks, --help and the errors they give. */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as v from "valibot";
import { UsageError } from "../../src/commands/args.ts";
import {
  SERVE_HELP,
  SERVE_SETTINGS,
  type ServeConfig,
  ServeConfigSchema,
  serveConfig,
} from "../../src/commands/serve-options.ts";
import { MultiloraError } from "../../src/errors.ts";

const ROOT = join(import.meta.dir, "../..");
const NAMES = Object.keys(SERVE_SETTINGS) as (keyof ServeConfig)[];
const POSITIONALS = NAMES.filter((name) => SERVE_SETTINGS[name].read === "positional");

/**
 * A value other than the default for every setting: `texts` are what the command line gives (one per
 * repetition; none for a boolean's bare flag), `value` what the setting becomes. Typed over ServeConfig,
 * so a new setting without a sample does not typecheck.
 */
const SAMPLES: { [K in keyof ServeConfig]: { texts: string[]; value: ServeConfig[K] } } = {
  "model-dir": { texts: ["models/m"], value: "models/m" },
  "lora-dir": { texts: ["loras"], value: "loras" },
  host: { texts: ["0.0.0.0"], value: "0.0.0.0" },
  port: { texts: ["8080"], value: 8080 },
  "served-model-name": { texts: ["one,two", "three"], value: ["one", "two", "three"] },
  "max-batch": { texts: ["12"], value: 12 },
  "max-seq-len": { texts: ["2048"], value: 2048 },
  "kv-cache-mb": { texts: ["300"], value: 300 },
  threads: { texts: ["3"], value: 3 },
  "prefill-chunk": { texts: ["128"], value: 128 },
  "max-lora-rank": { texts: ["16"], value: 16 },
  "max-loras": { texts: ["4"], value: 4 },
  "lora-cache-mb": { texts: ["0.5"], value: 0.5 },
  "adapter-memory-mb": { texts: ["100"], value: 100 },
  "max-adapter-mb": { texts: ["64"], value: 64 },
  "converted-cache-mb": { texts: ["200"], value: 200 },
  "allowed-lora-paths": { texts: ["/a,/b"], value: ["/a", "/b"] },
  preload: { texts: ["a, b"], value: ["a", "b"] },
  pin: { texts: ["c", "d"], value: ["c", "d"] },
  "max-queue": { texts: ["10"], value: 10 },
  "max-concurrent-per-key": { texts: ["3"], value: 3 },
  "queue-timeout": { texts: ["0"], value: 0 },
  "constraint-compile-timeout": { texts: ["0.5"], value: 0.5 },
  "constraint-cache-mb": { texts: ["64"], value: 64 },
  "tool-call-format": { texts: ["mistral"], value: "mistral" },
  "request-timeout": { texts: ["30.5"], value: 30.5 },
  "drain-timeout": { texts: ["5"], value: 5 },
  "max-body-mb": { texts: ["2"], value: 2 },
  "body-timeout": { texts: ["2.5"], value: 2.5 },
  "cache-dir": { texts: ["/tmp/c"], value: "/tmp/c" },
  "model-memory": { texts: ["copy"], value: "copy" },
  backend: { texts: ["cpu"], value: "cpu" },
  "kv-cache-free-gpu-mem-fraction": { texts: ["0.5"], value: 0.5 },
  "kv-cache-reuse": { texts: ["off"], value: "off" },
  "kv-block-tokens": { texts: ["16"], value: 16 },
  "lora-host-cache-mb": { texts: ["512"], value: 512 },
  "lora-device-cache-percent": { texts: ["0.1"], value: 0.1 },
  "lora-optimal-adapter-size": { texts: ["16"], value: 16 },
  "lora-max-adapter-size": { texts: ["32"], value: 32 },
  "trtllm-worker": { texts: ["/opt/executorWorker"], value: "/opt/executorWorker" },
  "api-key": { texts: ["sk-one,with,commas", "sk-two-2222"], value: ["sk-one,with,commas", "sk-two-2222"] },
  "cors-origin": {
    texts: ["https://a.example,https://b.example"],
    value: ["https://a.example", "https://b.example"],
  },
  "tls-cert": { texts: ["cert.pem"], value: "cert.pem" },
  "tls-key": { texts: ["key.pem"], value: "key.pem" },
  "api-keys-file": { texts: ["keys.json"], value: "keys.json" },
  "admin-key": { texts: ["sk-admin-1234"], value: "sk-admin-1234" },
  "protect-metrics": { texts: [], value: true },
  "open-admin-routes": { texts: [], value: true },
  "log-level": { texts: ["debug"], value: "debug" },
};

/** The command line that sets `name` to its sample (earlier arguments set to theirs). */
function argvFor(name: keyof ServeConfig): string[] {
  const at = POSITIONALS.indexOf(name);
  if (at >= 0) return POSITIONALS.slice(0, at + 1).flatMap((p) => SAMPLES[p].texts);
  const { texts } = SAMPLES[name];
  return texts.length === 0 ? [`--${name}`] : texts.flatMap((text) => [`--${name}`, text]);
}

function configFile(settings: unknown): string {
  const file = join(mkdtempSync(join(tmpdir(), "multilora-serve-options-")), "serve.json");
  writeFileSync(file, JSON.stringify(settings));
  return file;
}

function failure(run: () => unknown): Error {
  try {
    run();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected an error");
}

const ENV = ["PORT", "MULTILORA_API_KEY", "MULTILORA_ADMIN_KEY"];
const saved: Record<string, string | undefined> = {};
beforeEach(() => {
  for (const name of ENV) {
    saved[name] = process.env[name];
    delete process.env[name];
  }
});
afterEach(() => {
  for (const name of ENV) {
    if (saved[name] === undefined) delete process.env[name];
    else process.env[name] = saved[name];
  }
});

test("the defaults", () => {
  expect(serveConfig([]).config).toEqual({
    "model-dir": null,
    "lora-dir": null,
    host: "127.0.0.1",
    port: 3000,
    "served-model-name": [],
    "max-batch": null,
    "max-seq-len": null,
    "kv-cache-mb": null,
    threads: null,
    "prefill-chunk": 256,
    "max-lora-rank": 64,
    "max-loras": 0,
    "lora-cache-mb": 256,
    "adapter-memory-mb": 4096,
    "max-adapter-mb": null,
    "converted-cache-mb": 4096,
    "allowed-lora-paths": [],
    preload: [],
    pin: [],
    "max-queue": 256,
    "max-concurrent-per-key": null,
    "queue-timeout": 60,
    "constraint-compile-timeout": 2,
    "constraint-cache-mb": 256,
    "tool-call-format": "auto",
    "request-timeout": 600,
    "drain-timeout": 30,
    "max-body-mb": 16,
    "body-timeout": 30,
    "cache-dir": null,
    "model-memory": "auto",
    backend: "auto",
    "kv-cache-free-gpu-mem-fraction": null,
    "kv-cache-reuse": "on",
    "kv-block-tokens": 32,
    "lora-host-cache-mb": 1024,
    "lora-device-cache-percent": null,
    "lora-optimal-adapter-size": 8,
    "lora-max-adapter-size": 64,
    "trtllm-worker": null,
    "api-key": [],
    "cors-origin": [],
    "tls-cert": null,
    "tls-key": null,
    "api-keys-file": null,
    "admin-key": null,
    "protect-metrics": false,
    "open-admin-routes": false,
    "log-level": "info",
  });
  expect(v.parse(ServeConfigSchema, {})).toEqual(serveConfig([]).config);
});

describe("every setting round-trips", () => {
  test("every setting has a sample", () => {
    expect(Object.keys(SAMPLES).sort()).toEqual([...NAMES].sort());
  });

  for (const name of NAMES) {
    test(`${name}: from the command line and from --config`, () => {
      const { value } = SAMPLES[name];
      expect(value).not.toEqual(serveConfig([]).config[name]);
      expect(serveConfig(argvFor(name)).config[name]).toEqual(value);
      expect(serveConfig(["--config", configFile({ [name]: value })]).config[name]).toEqual(value);
    });
  }

  test("all at once; the settings as a whole are a valid --config file", () => {
    const argv = [
      ...POSITIONALS.flatMap((p) => SAMPLES[p].texts),
      ...NAMES.filter((n) => !POSITIONALS.includes(n)).flatMap(argvFor),
    ];
    const { config } = serveConfig(argv);
    for (const name of NAMES) expect(config[name]).toEqual(SAMPLES[name].value);
    expect(serveConfig(["--config", configFile(config)]).config).toEqual(config);
  });
});

describe("precedence", () => {
  test("flags over --config over env over defaults", () => {
    const file = configFile({ port: 9000, "max-batch": 4 });
    process.env.PORT = "4321";
    expect(serveConfig([]).config.port).toBe(4321);
    expect(serveConfig(["--config", file]).config).toMatchObject({ port: 9000, "max-batch": 4 });
    expect(serveConfig(["--config", file, "--port", "7000"]).config).toMatchObject({
      port: 7000,
      "max-batch": 4,
    });
    expect(serveConfig(["m", "--config", configFile({ "model-dir": "from-file" })]).config["model-dir"]).toBe(
      "m",
    );
  });

  test("$MULTILORA_API_KEY is one whole key, under --api-key and --config", () => {
    process.env.MULTILORA_API_KEY = "sk-env,with,commas";
    expect(serveConfig([]).config["api-key"]).toEqual(["sk-env,with,commas"]);
    expect(serveConfig(["--api-key", "sk-flag-1234"]).config["api-key"]).toEqual(["sk-flag-1234"]);
    expect(serveConfig(["--config", configFile({ "api-key": ["sk-file-1234"] })]).config["api-key"]).toEqual([
      "sk-file-1234",
    ]);
  });

  test("$MULTILORA_ADMIN_KEY gives the admin key (from a Kubernetes secret, not the command line)", () => {
    process.env.MULTILORA_ADMIN_KEY = "admin-key-from-env";
    expect(serveConfig([]).config["admin-key"]).toBe("admin-key-from-env");
    expect(serveConfig(["--admin-key", "admin-key-flag"]).config["admin-key"]).toBe("admin-key-flag");
  });

  test("an empty env var is unset; a bad one is named", () => {
    process.env.PORT = "";
    expect(serveConfig([]).config.port).toBe(3000);
    process.env.PORT = "eighty";
    const e = failure(() => serveConfig([]));
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toBe("$PORT eighty: expected a number");
  });
});

describe("--help", () => {
  test("lists every setting: flags under Options, positionals in the usage line and under Arguments", () => {
    for (const name of NAMES) {
      if (POSITIONALS.includes(name)) {
        expect(SERVE_HELP.split("\n")[0]).toContain(`[${name}]`);
        expect(SERVE_HELP).toMatch(new RegExp(`^ +${name} `, "m"));
      } else {
        expect(SERVE_HELP).toMatch(new RegExp(`^ +--${name}( |$)`, "m"));
      }
    }
    for (const name of ["config", "print-config", "help"])
      expect(SERVE_HELP).toMatch(new RegExp(`--${name}`));
  });

  test("names only flags that exist, shows defaults and env vars, and stays within 111 columns", () => {
    const flags = [...SERVE_HELP.matchAll(/^ +(?:-h, )?--([a-z-]+)/gm)].map((m) => m[1]);
    expect(flags.sort()).toEqual(
      [...NAMES.filter((n) => !POSITIONALS.includes(n)), "config", "print-config", "help"].sort(),
    );
    expect(SERVE_HELP).toContain("--lora-cache-mb <n>        adapter cache capacity [256]");
    expect(SERVE_HELP).toContain("[$PORT, else 3000]");
    expect(SERVE_HELP).toContain("$MULTILORA_API_KEY");
    expect(SERVE_HELP).toContain("--backend auto|cpu|trtllm");
    for (const line of SERVE_HELP.split("\n")) expect(line.length).toBeLessThanOrEqual(111);
  });

  test("-h and --help, --print-config are reported", () => {
    expect(serveConfig(["-h"]).help).toBe(true);
    expect(serveConfig(["--help"]).help).toBe(true);
    expect(serveConfig(["--print-config"])).toMatchObject({ print: true, help: false });
  });
});

describe("mistakes", () => {
  test("an unknown flag is a usage error with the closest flag", () => {
    const e = failure(() => serveConfig(["--max-bach", "3"]));
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toBe("unknown option --max-bach; did you mean --max-batch?");
    expect(failure(() => serveConfig(["--lora-cache", "3"])).message).toContain(
      "did you mean --lora-cache-mb?",
    );
    expect(failure(() => serveConfig(["--verbose"])).message).toBe("unknown option --verbose");
    expect(failure(() => serveConfig(["--model-dir", "m"])).message).toContain("given as an argument");
  });

  test("the CLI prints an unknown flag's suggestion and points at --help (exit 2)", () => {
    const r = spawnSync(process.execPath, [join(ROOT, "src/cli.ts"), "serve", "--pinn", "a"], {
      encoding: "utf8",
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("unknown option --pinn; did you mean --pin?");
    expect(r.stderr).toContain('Run "multilora serve --help"');
  });

  test("unknown --config keys are all named, with the closest setting", () => {
    const file = configFile({ max_batch: 4, "lora-cache": 64, colour: "blue", port: 1 });
    const e = failure(() => serveConfig(["--config", file]));
    expect(e).toBeInstanceOf(MultiloraError);
    expect((e as MultiloraError).code).toBe("invalid_config");
    expect(e.message).toContain(file);
    expect(e.message).toContain('"max_batch": did you mean "max-batch"?');
    expect(e.message).toContain('"lora-cache": did you mean "lora-cache-mb"?');
    expect(e.message).toMatch(/"colour"$/m);
    expect(e.message).not.toContain('"port"');
  });

  test("a value of the wrong type names the key, the expected type and where it came from", () => {
    const file = configFile({ port: "8080", backend: "gpu", preload: "a,b" });
    const e = failure(() => serveConfig(["--config", file]));
    expect(e).toBeInstanceOf(MultiloraError);
    expect(e.message).toContain(`port: Invalid type: Expected number but received "8080" (from ${file})`);
    expect(e.message).toContain('backend: Invalid type: Expected ("auto" | "cpu" | "trtllm")');
    expect(e.message).toContain("preload: Invalid type: Expected Array");
    const range = failure(() => serveConfig(["--max-batch", "0"]));
    expect(range.message).toContain(
      "max-batch: Invalid value: Expected >=1 but received 0 (from --max-batch)",
    );
    expect(failure(() => serveConfig(["--threads", "many"])).message).toBe(
      "--threads many: expected a number",
    );
    expect(failure(() => serveConfig(["--config", configFile([1])])).message).toContain("JSON object");
  });

  test("a third argument is refused", () => {
    expect(failure(() => serveConfig(["m", "l", "x"])).message).toBe('unexpected argument "x"');
  });
});
