import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ChatTool, chatTemplateFromText, loadChatTemplate } from "../../src/engine/chat-template.ts";
import { DEMO_CHAT_TEMPLATE, demoTokenizerConfig } from "../../src/engine/demo-tokenizer.ts";
import { MultiloraError } from "../../src/errors.ts";
import { httpStatus } from "../../src/server/errors.ts";

const FIXTURES = join(import.meta.dir, "../../../shared/fixtures");
const SMOL = join(FIXTURES, "smollm2-360m-instruct-lora-r8");
const QWEN = join(FIXTURES, "qwen2.5-0.5b-instruct-lora-r8");
const HAVE_SMOL = existsSync(SMOL);
const HAVE_QWEN = existsSync(QWEN);
if (!HAVE_SMOL || !HAVE_QWEN) {
  console.warn(
    `notice: ${FIXTURES} lacks the SmolLM2 or Qwen2.5 folder; their chat template tests are skipped`,
  );
}

let tempRoot = "";
let counter = 0;
/** A fresh model folder holding `files` (objects are written as JSON). */
function modelDir(files: Record<string, string | object>): string {
  const dir = join(tempRoot, `model-${counter++}`);
  mkdirSync(dir);
  for (const [name, content] of Object.entries(files)) {
    writeFileSync(join(dir, name), typeof content === "string" ? content : JSON.stringify(content));
  }
  return dir;
}
beforeAll(() => {
  tempRoot = mkdtempSync(join(tmpdir(), "multilora-chat-template-"));
});
afterAll(() => {
  rmSync(tempRoot, { recursive: true, force: true });
});

function expectMultiloraError(fn: () => unknown, ...parts: string[]): MultiloraError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(MultiloraError);
  const error = caught as MultiloraError;
  for (const part of parts) expect(error.message).toContain(part);
  return error;
}

describe.skipIf(!HAVE_SMOL)("SmolLM2's chat_template.jinja", () => {
  const template = () => loadChatTemplate(SMOL);

  test("renders system + user with the generation prompt as ChatML", () => {
    const t = template();
    expect(t.source).toBe(join(SMOL, "chat_template.jinja"));
    expect(t.available).toBe(true);
    const prompt = t.render(
      [
        { role: "system", content: "You convert units." },
        { role: "user", content: "How many meters is 5 km?" },
      ],
      { addGenerationPrompt: true },
    );
    expect(prompt).toBe(
      "<|im_start|>system\nYou convert units.<|im_end|>\n" +
        "<|im_start|>user\nHow many meters is 5 km?<|im_end|>\n" +
        "<|im_start|>assistant\n",
    );
  });

  test("adds SmolLM's default system prompt; no generation prompt when not asked", () => {
    const prompt = template().render([{ role: "user", content: "Hi" }], { addGenerationPrompt: false });
    expect(prompt).toBe(
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n" +
        "<|im_start|>user\nHi<|im_end|>\n",
    );
  });

  test("joins text parts with newlines; rejects other parts", () => {
    const t = template();
    const prompt = t.render(
      [
        { role: "system", content: [{ type: "text", text: "S" }] },
        {
          role: "user",
          content: [
            { type: "text", text: "first" },
            { type: "text", text: "second" },
          ],
        },
        { role: "assistant", content: null },
      ],
      { addGenerationPrompt: false },
    );
    expect(prompt).toBe(
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nfirst\nsecond<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n",
    );
    const image = { type: "image_url", image_url: { url: "x" } } as unknown as { type: "text"; text: string };
    const error = expectMultiloraError(
      () => t.render([{ role: "user", content: [image] }], { addGenerationPrompt: true }),
      "messages[0].content[0]",
      '"image_url"',
    );
    expect(httpStatus(error.code)).toBe(400);
  });

  test("checkTemplate passes", () => {
    expect(() => template().checkTemplate()).not.toThrow();
  });
});

describe.skipIf(!HAVE_QWEN)("Qwen2.5's chat_template in tokenizer_config.json", () => {
  test("renders system + user", () => {
    const t = loadChatTemplate(QWEN);
    expect(t.source).toBe(`${join(QWEN, "tokenizer_config.json")} (chat_template)`);
    t.checkTemplate();
    expect(
      t.render(
        [
          { role: "system", content: "Be brief." },
          { role: "user", content: "Hi" },
        ],
        { addGenerationPrompt: true },
      ),
    ).toBe(
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    );
  });

  test("renders tools, a tool call (arguments as an object) and a tool result", () => {
    const tools: ChatTool[] = [
      {
        type: "function",
        function: {
          name: "get_weather",
          description: "Weather in a city",
          parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
        },
      },
    ];
    const prompt = loadChatTemplate(QWEN).render(
      [
        { role: "user", content: "Weather in Paris?" },
        {
          role: "assistant",
          content: null,
          tool_calls: [
            {
              id: "call_1",
              type: "function",
              function: { name: "get_weather", arguments: '{"city": "Paris"}' },
            },
          ],
        },
        { role: "tool", tool_call_id: "call_1", content: "18°C, sunny" },
      ],
      { addGenerationPrompt: true, tools },
    );
    expect(prompt).toBe(
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n" +
        "You may call one or more functions to assist with the user query.\n\n" +
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" +
        '{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", ' +
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n' +
        "</tools>\n\nFor each function call, return a json object with function name and arguments within " +
        "<tool_call></tool_call> XML tags:\n<tool_call>\n" +
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' +
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n" +
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n' +
        "</tool_call><|im_end|>\n" +
        "<|im_start|>user\n<tool_response>\n18°C, sunny\n</tool_response><|im_end|>\n" +
        "<|im_start|>assistant\n",
    );
  });
});

describe("the demo tokenizer's template", () => {
  test("renders ChatML after the BOS from tokenizer_config.json", () => {
    const t = loadChatTemplate(modelDir({ "tokenizer_config.json": demoTokenizerConfig() }));
    expect(t.text).toBe(DEMO_CHAT_TEMPLATE);
    t.checkTemplate();
    const messages = [
      { role: "system" as const, content: "You are terse." },
      { role: "user" as const, content: "Hi" },
      { role: "assistant" as const, content: "Hello." },
      { role: "user" as const, content: "Bye" },
    ];
    expect(t.render(messages, { addGenerationPrompt: true })).toBe(
      "<|begin_of_text|><|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" +
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
    );
    // bos_token given per call wins over the config's.
    expect(t.render([{ role: "user", content: "x" }], { addGenerationPrompt: false, bosToken: "" })).toBe(
      "<|im_start|>user\nx<|im_end|>\n",
    );
  });
});

describe("where the template comes from", () => {
  test("chat_template.jinja wins over tokenizer_config.json", () => {
    const dir = modelDir({
      "chat_template.jinja": "J{{ messages[0].content }}",
      "tokenizer_config.json": { chat_template: "C{{ messages[0].content }}" },
    });
    expect(
      loadChatTemplate(dir).render([{ role: "user", content: "1" }], { addGenerationPrompt: false }),
    ).toBe("J1");
  });

  test("the list form uses 'default', and 'tool_use' when a request has tools", () => {
    const dir = modelDir({
      "tokenizer_config.json": {
        eos_token: "</s>",
        chat_template: [
          { name: "tool_use", template: "T{{ tools[0].function.name }}{{ eos_token }}" },
          { name: "default", template: "D{{ messages[0].content }}{{ eos_token }}" },
        ],
      },
    });
    const t = loadChatTemplate(dir);
    expect(t.source).toBe(`${join(dir, "tokenizer_config.json")} (chat_template "default")`);
    const messages = [{ role: "user" as const, content: "m" }];
    expect(t.render(messages, { addGenerationPrompt: true })).toBe("Dm</s>");
    const tools: ChatTool[] = [{ type: "function", function: { name: "f" } }];
    expect(t.render(messages, { addGenerationPrompt: true, tools })).toBe("Tf</s>");
    expect(t.render(messages, { addGenerationPrompt: true, eosToken: "<e>" })).toBe("Dm<e>");
  });

  test("a list without 'default' is an error naming the file", () => {
    const dir = modelDir({ "tokenizer_config.json": { chat_template: [{ name: "rag", template: "x" }] } });
    expectMultiloraError(
      () => loadChatTemplate(dir),
      join(dir, "tokenizer_config.json"),
      '"rag"',
      '"default"',
    );
  });

  test("extra variables reach the template", () => {
    const t = chatTemplateFromText("{{ greeting }} {{ messages | length }}", "inline");
    expect(
      t.render([{ role: "user", content: "a" }], { addGenerationPrompt: true, extra: { greeting: "hey" } }),
    ).toBe("hey 1");
  });
});

describe("errors", () => {
  test("no template: loading works, chat is a clear error", () => {
    for (const dir of [modelDir({}), modelDir({ "tokenizer_config.json": { eos_token: "</s>" } })]) {
      const t = loadChatTemplate(dir);
      expect(t.available).toBe(false);
      expect(t.source).toBeNull();
      expect(() => t.checkTemplate()).not.toThrow();
      const error = expectMultiloraError(
        () => t.render([{ role: "user", content: "Hi" }], { addGenerationPrompt: true }),
        dir,
        "has no chat template",
        "chat_template.jinja",
      );
      expect(error.code).toBe("no_chat_template");
      expect(httpStatus(error.code)).toBe(400);
    }
  });

  test("a syntax error names the template file", () => {
    const jinjaDir = modelDir({ "chat_template.jinja": "{% for m in messages %}{{ m.content }" });
    let error = expectMultiloraError(
      () => loadChatTemplate(jinjaDir),
      join(jinjaDir, "chat_template.jinja"),
      "cannot be parsed",
    );
    expect(error.code).toBe("invalid_chat_template");
    const configDir = modelDir({ "tokenizer_config.json": { chat_template: "{% if %}" } });
    error = expectMultiloraError(() => loadChatTemplate(configDir), join(configDir, "tokenizer_config.json"));
    const unclosed = modelDir({ "chat_template.jinja": "{% for m in messages %}{{ m.content }}" });
    expectMultiloraError(() => loadChatTemplate(unclosed), join(unclosed, "chat_template.jinja"), "unclosed");
  });

  test("malformed tokenizer_config.json names the file", () => {
    const dir = modelDir({ "tokenizer_config.json": "{not json" });
    expectMultiloraError(() => loadChatTemplate(dir), join(dir, "tokenizer_config.json"), "not valid JSON");
    const wrongType = modelDir({ "tokenizer_config.json": { chat_template: 5 } });
    expectMultiloraError(
      () => loadChatTemplate(wrongType),
      join(wrongType, "tokenizer_config.json"),
      "chat_template",
    );
  });

  test("checkTemplate names the file when the template fails on a sample conversation", () => {
    const raising = modelDir({ "chat_template.jinja": "{{ raise_exception('roles must alternate') }}" });
    const t = loadChatTemplate(raising);
    const error = expectMultiloraError(
      () => t.checkTemplate(),
      join(raising, "chat_template.jinja"),
      "roles must alternate",
    );
    expect(error.code).toBe("invalid_chat_template");
    const mute = modelDir({ "chat_template.jinja": "{% for m in messages %}{{ m.role }}{% endfor %}" });
    expectMultiloraError(
      () => loadChatTemplate(mute).checkTemplate(),
      join(mute, "chat_template.jinja"),
      "last",
    );
  });

  test("a template that rejects a request's messages is a 400 naming the template", () => {
    const t = chatTemplateFromText(
      "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok",
      "/m/chat_template.jinja",
    );
    expect(t.render([{ role: "user", content: "x" }], { addGenerationPrompt: true })).toBe("ok");
    const error = expectMultiloraError(
      () => t.render([{ role: "system", content: "x" }], { addGenerationPrompt: true }),
      "/m/chat_template.jinja",
      "System role not supported",
    );
    expect(httpStatus(error.code)).toBe(400);
    expect(error.code).toBe("chat_template_error");
  });
});
