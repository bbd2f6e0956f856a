import { describe, expect, test } from "bun:test";
import { rng } from "../../src/engine/random-checkpoint.ts";
import { FAMILIES, type FamilyName } from "../../src/tools/families.ts";
import { parseToolCalls } from "../../src/tools/parse.ts";
import { createToolCallStream, type ToolCallDelta } from "../../src/tools/stream.ts";
import { CASES, TOOLS } from "./cases.ts";

const OPENERS = ["<tool_call>", "<|python_tag|>", "[TOOL_CALLS]"];

interface Streamed {
  content: string;
  calls: { id: string; name: string; arguments: string }[];
}

/**
 * Streams `pieces` and checks, after every push, the invariants that hold however the text is cut: the
 * content so far is a prefix of the final content (nothing is taken back), tool-call deltas come in
 * index order, each call's first delta has its id and name and the next ones only arguments.
 */
function stream(family: FamilyName, pieces: readonly string[], finalContent: string): Streamed {
  const parser = createToolCallStream(FAMILIES[family], TOOLS);
  const out: Streamed = { content: "", calls: [] };
  const take = (deltas: ToolCallDelta[]) => {
    for (const delta of deltas) {
      if ("content" in delta) {
        expect(delta.content.length).toBeGreaterThan(0);
        out.content += delta.content;
        expect(finalContent.startsWith(out.content)).toBe(true);
        continue;
      }
      const { index, id, name, argumentsDelta } = delta.toolCall;
      if (index === out.calls.length) {
        expect(id).toMatch(/^call_[A-Za-z0-9]{24}$/);
        expect(name).toBeString();
        expect(argumentsDelta).toBeUndefined();
        out.calls.push({ id: id as string, name: name as string, arguments: "" });
      } else {
        expect(index).toBe(out.calls.length - 1);
        expect(id).toBeUndefined();
        expect(name).toBeUndefined();
        (out.calls[index] as Streamed["calls"][number]).arguments += argumentsDelta ?? "";
      }
    }
  };
  for (const piece of pieces) take(parser.push(piece));
  take(parser.end());
  expect(parser.callCount).toBe(out.calls.length);
  expect(parser.end()).toEqual([]);
  return out;
}

function randomSplit(text: string, rand: () => number): string[] {
  const chars = Array.from(text);
  const pieces: string[] = [];
  let i = 0;
  while (i < chars.length) {
    const n = 1 + Math.floor(rand() * 8);
    pieces.push(chars.slice(i, i + n).join(""));
    i += n;
  }
  return pieces;
}

function expectSameAsParse(family: FamilyName, text: string, pieces: readonly string[]): void {
  const whole = parseToolCalls(FAMILIES[family], text, TOOLS);
  const wholeContent = whole.content ?? "";
  const streamed = stream(family, pieces, wholeContent);
  expect(streamed.content).toBe(wholeContent);
  expect(streamed.calls.map((c) => ({ name: c.name, arguments: c.arguments }))).toEqual(
    whole.calls.map((c) => ({ name: c.name, arguments: c.arguments })),
  );
}

describe("the streaming parser gives what parseToolCalls gives", () => {
  for (const c of CASES) {
    test(`${c.family}: ${c.name}, cut at every point, char by char and at random`, () => {
      const chars = Array.from(c.text);
      expectSameAsParse(c.family, c.text, [c.text]);
      expectSameAsParse(c.family, c.text, chars);
      for (let i = 1; i < chars.length; i++) {
        expectSameAsParse(c.family, c.text, [chars.slice(0, i).join(""), chars.slice(i).join("")]);
      }
      const rand = rng(chars.length);
      for (let k = 0; k < 20; k++) expectSameAsParse(c.family, c.text, randomSplit(c.text, rand));
    });
  }

  test("no opener text reaches content when the calls are valid", () => {
    for (const c of CASES.filter((x) => x.calls.length > 0)) {
      const chars = Array.from(c.text);
      const streamed = stream(c.family, chars, c.content ?? "");
      for (const opener of OPENERS) {
        if (!(c.content ?? "").includes(opener)) expect(streamed.content).not.toContain(opener);
      }
    }
  });

  test("random mixes of text, calls and broken calls", () => {
    const parts: Record<FamilyName, string[]> = {
      hermes: [
        "Hi ",
        "\n",
        "<tool",
        "<tool_call>",
        '<tool_call>{"name": "add", "arguments": {"a": "}"}}</tool_call>',
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
        '{"name": "add"}',
        "</tool_call>",
        "😀",
      ],
      llama3: [
        " ",
        "; ",
        "text ",
        '{"name": "add", "parameters": {"a": [1, "{"]}}',
        '<|python_tag|>{"name": "search", "arguments": {}}',
        '{"name": "nope", "parameters": {}}',
        "<|python",
        "{",
        "}",
      ],
      mistral: [
        "ok ",
        " ",
        "[TOOL_CALLS]",
        '[TOOL_CALLS][{"name": "add", "arguments": {"a": "]"}}]',
        '[TOOL_CALLS]search[ARGS]{"query": "[ARGS]"}',
        "[TOOL_CALLS]add{}",
        "[TOOL",
        "[ARGS]",
        "]",
      ],
    };
    const rand = rng(14);
    for (let k = 0; k < 600; k++) {
      const family = (["hermes", "llama3", "mistral"] as const)[k % 3] as FamilyName;
      const pool = parts[family];
      const count = 1 + Math.floor(rand() * 6);
      const text = Array.from({ length: count }, () => pool[Math.floor(rand() * pool.length)]).join("");
      expectSameAsParse(family, text, randomSplit(text, rand));
      expectSameAsParse(family, text, Array.from(text));
    }
  });
});

describe("holding back", () => {
  test("a possible opener is held until it is known not to be one", () => {
    const parser = createToolCallStream(FAMILIES.hermes, TOOLS);
    expect(parser.push("Hello <tool")).toEqual([{ content: "Hello " }]);
    expect(parser.push("_c")).toEqual([]);
    expect(parser.push("ase> done")).toEqual([{ content: "<tool_case> done" }]);
    expect(parser.end()).toEqual([]);
  });

  test("a call goes out when it closes: id and name, then its arguments", () => {
    const parser = createToolCallStream(FAMILIES.hermes, TOOLS);
    expect(parser.push("Sure.\n<tool_call>\n")).toEqual([{ content: "Sure.\n" }]);
    expect(parser.push('{"name": "add", "arguments": {"a": 1}}\n</tool_')).toEqual([]);
    const deltas = parser.push("call>");
    expect(deltas).toHaveLength(2);
    expect(deltas[0]).toEqual({ toolCall: { index: 0, id: expect.any(String), name: "add" } });
    expect(deltas[1]).toEqual({ toolCall: { index: 0, argumentsDelta: '{"a": 1}' } });
    expect(parser.callCount).toBe(1);
    expect(parser.end()).toEqual([]);
  });

  test("an unfinished call comes back as content at the end", () => {
    const parser = createToolCallStream(FAMILIES.hermes, TOOLS);
    expect(parser.push('<tool_call>{"name": "add", "arg')).toEqual([]);
    expect(parser.end()).toEqual([{ content: '<tool_call>{"name": "add", "arg' }]);
    expect(parser.push("more")).toEqual([]);
  });

  test("a call that fails midway is released at once, and the rest streams as content", () => {
    const parser = createToolCallStream(FAMILIES.hermes, TOOLS);
    expect(parser.push("<tool_call>{'")).toEqual([{ content: "<tool_call>{'" }]);
    expect(parser.push("<tool_call>")).toEqual([{ content: "<tool_call>" }]);
  });

  test("Llama: leading whitespace is held, text that is not a call is released", () => {
    const parser = createToolCallStream(FAMILIES.llama3, TOOLS);
    expect(parser.push("\n ")).toEqual([]);
    expect(parser.push("Hi")).toEqual([{ content: "\n Hi" }]);
    expect(parser.push(' {"name": "add"}')).toEqual([{ content: ' {"name": "add"}' }]);
  });
});
