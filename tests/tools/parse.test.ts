import { describe, expect, test } from "bun:test";
import { FAMILIES, FAMILY_NAMES, formatToolCalls } from "../../src/tools/families.ts";
import { newToolCallId } from "../../src/tools/ids.ts";
import { parseToolCalls } from "../../src/tools/parse.ts";
import { CASES, TOOLS } from "./cases.ts";

const ID = /^call_[A-Za-z0-9]{24}$/;

describe("parseToolCalls on hand-written outputs", () => {
  for (const c of CASES) {
    test(`${c.family}: ${c.name}`, () => {
      const result = parseToolCalls(FAMILIES[c.family], c.text, TOOLS);
      expect(result.content).toBe(c.content);
      expect(result.calls.map(({ name, arguments: args }) => ({ name, arguments: args }))).toEqual(c.calls);
      for (const call of result.calls) {
        expect(call.id).toMatch(ID);
        expect(JSON.parse(call.arguments)).toBeInstanceOf(Object);
      }
    });
  }

  test("never loses text: content and the calls' text together cover the output", () => {
    for (const c of CASES) {
      const { content, calls } = parseToolCalls(FAMILIES[c.family], c.text, TOOLS);
      if (calls.length === 0) expect(content).toBe(c.text);
      for (const call of calls) expect(c.text).toContain(call.name);
    }
  });

  test("a tool list without the named tool makes it text", () => {
    const text = '<tool_call>{"name": "add", "arguments": {}}</tool_call>';
    expect(parseToolCalls(FAMILIES.hermes, text, [])).toEqual({ content: text, calls: [] });
  });

  test("each family reads back the calls it writes", () => {
    const calls = [
      { name: "add", arguments: '{"a": 1, "b": [2, 3]}' },
      { name: "search", arguments: '{"query": "} \\" </tool_call>"}' },
    ];
    for (const name of FAMILY_NAMES) {
      const family = FAMILIES[name];
      const text = formatToolCalls(family, calls);
      const parsed = parseToolCalls(family, text, TOOLS);
      expect(parsed.content).toBeNull();
      expect(parsed.calls.map((c) => ({ name: c.name, arguments: c.arguments }))).toEqual(calls);
    }
  });

  test("ids are call_ and 24 random alphanumerics, all different", () => {
    const ids = new Set(Array.from({ length: 2000 }, () => newToolCallId()));
    expect(ids.size).toBe(2000);
    for (const id of ids) expect(id).toMatch(ID);
  });
});
