import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  detectFamily,
  explainFamilyDetection,
  FAMILIES,
  familyByName,
  formatToolCalls,
} from "../../src/tools/families.ts";
import { FIXTURES, HAVE_FIXTURES } from "../helpers/fixtures.ts";

const SMOL_TEMPLATE = join(FIXTURES, "smollm2-360m-instruct-lora-r8/chat_template.jinja");
const QWEN_CONFIG = join(FIXTURES, "qwen2.5-0.5b-instruct-lora-r8/tokenizer_config.json");

/** From Llama 3.1 Instruct's template (abridged). */
const LLAMA_31 = `{{- bos_token }}
{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}{{- "Environment: ipython\\n" }}{%- endif %}
{{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
{%- for message in messages %}
    {%- if 'tool_calls' in message %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
        {%- else %}
            {{- '{"name": "' + tool_call.name + '", ' }}{{- '"parameters": ' }}{{- tool_call.arguments | tojson }}{{- "}" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
    {%- endif %}
{%- endfor %}`;

/** From Llama 3.2 Instruct's template (abridged): no <|python_tag|>. */
const LLAMA_32 = `{%- for message in messages %}
    {%- if message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}`;

/** From Mistral 7B Instruct v0.3's template (abridged). */
const MISTRAL_V03 = `{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}{{- "[AVAILABLE_TOOLS] [" }}{%- endif %}
        {{- "[INST] " + message["content"] + "[/INST]" }}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}{{- tool_call.function|tojson }}{%- endfor %}
        {{- "]" + eos_token }}
    {%- elif message["role"] == "tool" %}
        {{- '[TOOL_RESULTS] {"content": ' + message.content|string + '}[/TOOL_RESULTS]' }}
    {%- endif %}
{%- endfor %}`;

/** Functionary v3.1 (Llama 3.1 based), a syntax of its own. */
const FUNCTIONARY = `{{- "<|start_header_id|>assistant<|end_header_id|>\\n\\n<function=" + tool_call.name + ">" }}
{{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}`;

const LLAMA_2 = "{% for message in messages %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endfor %}";

describe("detectFamily", () => {
  test.skipIf(!HAVE_FIXTURES || !existsSync(SMOL_TEMPLATE))(
    "SmolLM2's template (ChatML, no tool syntax)",
    () => {
      const detection = explainFamilyDetection(readFileSync(SMOL_TEMPLATE, "utf8"));
      expect(detection.family?.name).toBe("hermes");
      expect(detection.reason).toContain("ChatML");
    },
  );

  test.skipIf(!HAVE_FIXTURES || !existsSync(QWEN_CONFIG))("Qwen2.5's template (<tool_call>)", () => {
    const config = JSON.parse(readFileSync(QWEN_CONFIG, "utf8")) as { chat_template: string };
    const detection = explainFamilyDetection(config.chat_template);
    expect(detection.family?.name).toBe("hermes");
    expect(detection.reason).toContain("<tool_call>");
  });

  test("Llama 3.1 and 3.2", () => {
    expect(detectFamily(LLAMA_31)?.name).toBe("llama3");
    expect(detectFamily(LLAMA_32)?.name).toBe("llama3");
  });

  test("Mistral", () => {
    expect(detectFamily(MISTRAL_V03)?.name).toBe("mistral");
    expect(detectFamily("{{ '[TOOL_CALLS]' + tool_call.function.name + '[ARGS]' + arguments }}")?.name).toBe(
      "mistral",
    );
  });

  test("templates of no supported family", () => {
    expect(detectFamily(FUNCTIONARY)).toBeNull();
    expect(detectFamily(LLAMA_2)).toBeNull();
    expect(detectFamily("")).toBeNull();
  });
});

describe("families", () => {
  test("familyByName, for the flag", () => {
    expect(familyByName("hermes")).toBe(FAMILIES.hermes);
    expect(familyByName(" Llama3 ")).toBe(FAMILIES.llama3);
    expect(familyByName("MISTRAL")).toBe(FAMILIES.mistral);
    expect(familyByName("llama")).toBeNull();
  });

  test("openers", () => {
    expect(FAMILIES.hermes.openers.map((o) => o.text)).toEqual(["<tool_call>"]);
    expect(FAMILIES.llama3.openers).toEqual([
      { text: "<|python_tag|>", atMessageStart: false },
      { text: '{"name"', atMessageStart: true },
    ]);
    expect(FAMILIES.mistral.openers.map((o) => o.text)).toEqual(["[TOOL_CALLS]"]);
  });

  test("formatToolCalls writes each family's own syntax", () => {
    const calls = [
      { name: "add", arguments: '{"a": 1}' },
      { name: "search", arguments: "{}" },
    ];
    expect(formatToolCalls(FAMILIES.hermes, calls)).toBe(
      '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n' +
        '<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call>',
    );
    expect(formatToolCalls(FAMILIES.llama3, calls)).toBe(
      '{"name": "add", "parameters": {"a": 1}}; {"name": "search", "parameters": {}}',
    );
    expect(formatToolCalls(FAMILIES.mistral, calls)).toBe(
      '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}, {"name": "search", "arguments": {}}]',
    );
  });
});
