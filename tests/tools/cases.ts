/** Hand-written model outputs of each family, with what the parser must make of them. */
import type { FamilyName } from "../../src/tools/families.ts";
import type { ToolLike } from "../../src/tools/parse.ts";

export const TOOLS: readonly ToolLike[] = [
  { function: { name: "get_weather" } },
  { function: { name: "search" } },
  { function: { name: "add" } },
];

export interface Case {
  name: string;
  family: FamilyName;
  text: string;
  content: string | null;
  calls: { name: string; arguments: string }[];
}

/** A case whose output is not calls: all of it comes back as content. */
function asText(name: string, family: FamilyName, text: string): Case {
  return { name, family, text, content: text, calls: [] };
}

const PARIS = '{"location": "Paris", "unit": "celsius"}';
const TRICKY =
  '{"query": "a } b { \\"quoted\\" </tool_call> [TOOL_CALLS] <|python_tag|> \\\\", ' +
  '"nested": {"list": [1, {"x": "}"}, [], {}], "empty": "", "u": "\\u00e9\\n"}}';
const WEATHER = `{"name": "get_weather", "arguments": ${PARIS}}`;

export const CASES: readonly Case[] = [
  // hermes
  {
    name: "one call",
    family: "hermes",
    text: `<tool_call>\n${WEATHER}\n</tool_call>`,
    content: null,
    calls: [{ name: "get_weather", arguments: PARIS }],
  },
  {
    name: "several calls",
    family: "hermes",
    text: `<tool_call>\n${WEATHER}\n</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n`,
    content: null,
    calls: [
      { name: "get_weather", arguments: PARIS },
      { name: "add", arguments: '{"a": 1, "b": 2}' },
    ],
  },
  {
    name: "text before a call",
    family: "hermes",
    text: `Let me look that up.\n<tool_call>\n${WEATHER}\n</tool_call>`,
    content: "Let me look that up.\n",
    calls: [{ name: "get_weather", arguments: PARIS }],
  },
  {
    name: "text after a call",
    family: "hermes",
    text: `<tool_call>${WEATHER}</tool_call>\n\nI will wait for the result.`,
    content: "\n\nI will wait for the result.",
    calls: [{ name: "get_weather", arguments: PARIS }],
  },
  {
    name: "braces, escaped quotes and </tool_call> inside strings",
    family: "hermes",
    text: `<tool_call>\n{"name": "search", "arguments": ${TRICKY}}\n</tool_call>`,
    content: null,
    calls: [{ name: "search", arguments: TRICKY }],
  },
  {
    name: "no whitespace, parameters instead of arguments, type function",
    family: "hermes",
    text: '<tool_call>{"type":"function","name":"add","parameters":{"a":1,"b":2}}</tool_call>',
    content: null,
    calls: [{ name: "add", arguments: '{"a":1,"b":2}' }],
  },
  {
    name: "no arguments, and arguments as a JSON string",
    family: "hermes",
    text:
      '<tool_call>\n{"name": "search"}\n</tool_call>\n' +
      '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1}"}\n</tool_call>',
    content: null,
    calls: [
      { name: "search", arguments: "{}" },
      { name: "add", arguments: '{"a": 1}' },
    ],
  },
  {
    name: "numbers kept as written",
    family: "hermes",
    text: '<tool_call>{"name": "add", "arguments": {"a": 12345678901234567890, "b": 1.50e3}}</tool_call>',
    content: null,
    calls: [{ name: "add", arguments: '{"a": 12345678901234567890, "b": 1.50e3}' }],
  },
  {
    name: "non-ASCII text and arguments",
    family: "hermes",
    text: 'Voilà 😀 <tool_call>{"name": "search", "arguments": {"query": "héllo 😀 日本"}}</tool_call>',
    content: "Voilà 😀 ",
    calls: [{ name: "search", arguments: '{"query": "héllo 😀 日本"}' }],
  },
  {
    name: "a malformed call after a valid one",
    family: "hermes",
    text: `<tool_call>${WEATHER}</tool_call>\n<tool_call>{"name": "add", "arguments": {"a": }}</tool_call> tail`,
    content: '\n<tool_call>{"name": "add", "arguments": {"a": }}</tool_call> tail',
    calls: [{ name: "get_weather", arguments: PARIS }],
  },
  asText(
    "malformed JSON",
    "hermes",
    'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"location": }}\n</tool_call>',
  ),
  asText("single quotes", "hermes", "<tool_call>\n{'name': 'get_weather', 'arguments': {}}\n</tool_call>"),
  asText("unknown tool", "hermes", '<tool_call>\n{"name": "delete_all", "arguments": {}}\n</tool_call>'),
  asText("unterminated call", "hermes", `Checking.\n<tool_call>\n${WEATHER}\n`),
  asText("unterminated JSON", "hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"loc'),
  asText("an opener cut short at the end", "hermes", "Nearly a call <tool_ca"),
  asText("text between the JSON and the closer", "hermes", `<tool_call>${WEATHER} oops</tool_call>`),
  asText("an extra key", "hermes", '<tool_call>{"name": "add", "arguments": {}, "why": 1}</tool_call>'),
  asText("arguments not an object", "hermes", '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>'),
  asText("no call at all", "hermes", "The weather in Paris is sunny."),
  asText("look-alikes of the opener", "hermes", "Use <tool> or <tool_calls> or <tool_call without a close"),
  asText("whitespace only", "hermes", "  \n"),
  asText("empty", "hermes", ""),

  // llama3
  {
    name: "one call, bare",
    family: "llama3",
    text: '{"name": "get_weather", "parameters": {"location": "Paris", "unit": "celsius"}}',
    content: null,
    calls: [{ name: "get_weather", arguments: PARIS }],
  },
  {
    name: "one call after <|python_tag|>",
    family: "llama3",
    text: '<|python_tag|>{"name": "get_weather", "parameters": {"location": "Paris", "unit": "celsius"}}',
    content: null,
    calls: [{ name: "get_weather", arguments: PARIS }],
  },
  {
    name: "several calls separated by ;",
    family: "llama3",
    text: '\n{"name": "add", "parameters": {"a": 1}}; {"name": "search", "arguments": {"query": "x;y"}};\n',
    content: null,
    calls: [
      { name: "add", arguments: '{"a": 1}' },
      { name: "search", arguments: '{"query": "x;y"}' },
    ],
  },
  {
    name: "text before <|python_tag|>",
    family: "llama3",
    text: 'I will search. <|python_tag|>{"name": "search", "parameters": {"query": "llamas"}}',
    content: "I will search. ",
    calls: [{ name: "search", arguments: '{"query": "llamas"}' }],
  },
  {
    name: "braces and escaped quotes inside strings",
    family: "llama3",
    text: `{"name": "search", "parameters": ${TRICKY}}`,
    content: null,
    calls: [{ name: "search", arguments: TRICKY }],
  },
  {
    name: "text after a call",
    family: "llama3",
    text: '{"name": "add", "parameters": {"a": 1}} Hope that helps.',
    content: " Hope that helps.",
    calls: [{ name: "add", arguments: '{"a": 1}' }],
  },
  asText("JSON that is not a call", "llama3", '{"answer": 42, "name": "get_weather"}'),
  asText("a call object after text", "llama3", 'Here you go: {"name": "add", "parameters": {"a": 1}}'),
  {
    name: "two calls without ;",
    family: "llama3",
    text: '{"name": "add", "parameters": {}}\n{"name": "search", "parameters": {"query": "q"}}',
    content: null,
    calls: [
      { name: "add", arguments: "{}" },
      { name: "search", arguments: '{"query": "q"}' },
    ],
  },
  asText("malformed JSON", "llama3", '{"name": "add", "parameters": {"a": 1,}}'),
  asText("unknown tool", "llama3", '<|python_tag|>{"name": "rm", "parameters": {}}'),
  asText("unterminated call", "llama3", '{"name": "get_weather", "parameters": {"location": "Par'),
  asText("a built-in tool's Python call", "llama3", '<|python_tag|>brave_search.call(query="llamas")'),
  asText("both arguments and parameters", "llama3", '{"name": "add", "arguments": {}, "parameters": {}}'),
  asText("no call at all", "llama3", "Llamas are camelids."),

  // mistral
  {
    name: "one call in an array",
    family: "mistral",
    text: `[TOOL_CALLS] [${WEATHER}]`,
    content: null,
    calls: [{ name: "get_weather", arguments: PARIS }],
  },
  {
    name: "several calls in an array, with ids",
    family: "mistral",
    text: `[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}, "id": "abc123def"}, {"name": "search", "arguments": ${TRICKY}}]`,
    content: null,
    calls: [
      { name: "add", arguments: '{"a": 1}' },
      { name: "search", arguments: TRICKY },
    ],
  },
  {
    name: "text before the calls",
    family: "mistral",
    text: `Let me check. [TOOL_CALLS][${WEATHER}]`,
    content: "Let me check. ",
    calls: [{ name: "get_weather", arguments: PARIS }],
  },
  {
    name: "name[ARGS]{...} calls",
    family: "mistral",
    text: `[TOOL_CALLS]get_weather[ARGS]${PARIS}[TOOL_CALLS]search[ARGS]${TRICKY}`,
    content: null,
    calls: [
      { name: "get_weather", arguments: PARIS },
      { name: "search", arguments: TRICKY },
    ],
  },
  {
    name: "name{...} calls (v11 tokenizer)",
    family: "mistral",
    text: '[TOOL_CALLS]add{"a": 3.5, "b": 4}',
    content: null,
    calls: [{ name: "add", arguments: '{"a": 3.5, "b": 4}' }],
  },
  asText("malformed JSON", "mistral", '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}]'),
  asText("unknown tool", "mistral", '[TOOL_CALLS][{"name": "rm", "arguments": {}}]'),
  asText("one bad element", "mistral", `[TOOL_CALLS][${WEATHER}, {"name": "rm", "arguments": {}}]`),
  asText("unknown tool, named form", "mistral", "[TOOL_CALLS]rm[ARGS]{}"),
  asText("an empty array", "mistral", "[TOOL_CALLS][]"),
  asText("unterminated array", "mistral", `[TOOL_CALLS][${WEATHER}`),
  asText("unterminated named call", "mistral", '[TOOL_CALLS]add[ARGS]{"a": 1'),
  asText("no call at all", "mistral", "Nothing to call [TOOL here."),
];
