import { describe, expect, test } from "bun:test";
import { JsonScanner, topLevelSpans } from "../../src/tools/json-scanner.ts";

/** The status after the whole text, and where "done" came (or -1). */
function scan(text: string): { status: string; doneAt: number } {
  const scanner = new JsonScanner();
  const chars = Array.from(text);
  for (let i = 0; i < chars.length; i++) {
    const status = scanner.push(chars[i] as string);
    if (status !== "more") return { status, doneAt: status === "done" ? i : -1 };
  }
  return { status: "more", doneAt: -1 };
}

describe("JsonScanner", () => {
  test("ends at the closing bracket, not at brackets in strings", () => {
    const text = '{"a": "}]\\"{", "b": [1, -2.5e3, true, false, null, {"c": []}], "d": "\\u00e9"}';
    expect(scan(`${text} trailing`)).toEqual({ status: "done", doneAt: text.length - 1 });
    expect(scan('[{"x": 1}, "]"]')).toEqual({ status: "done", doneAt: 14 });
  });

  test("unfinished text is more", () => {
    for (const text of ["{", '{"a"', '{"a": ', '{"a": "x', '{"a": [1, 2', '{"a": tr', '{"a": 1'])
      expect(scan(text).status).toBe("more");
  });

  test("errors as soon as the text can no longer be JSON", () => {
    for (const text of [
      "x",
      "{'a'",
      '{"a" 1',
      '{"a": }',
      '{"a": 1,,',
      '{"a": [1}',
      '{"a": tx',
      '{"a": "\\x"',
      '{"a\n"',
    ])
      expect(scan(text).status).toBe("error");
  });

  test("topLevelSpans gives members' and elements' original text", () => {
    expect(topLevelSpans('{ "a" : {"x": "}"} , "b":[1,2] ,"c":"s"}')).toEqual([
      { key: "a", text: '{"x": "}"}' },
      { key: "b", text: "[1,2]" },
      { key: "c", text: '"s"' },
    ]);
    expect(topLevelSpans('[ {"a": 1}, 2 , "x"]')).toEqual([
      { text: '{"a": 1}' },
      { text: "2" },
      { text: '"x"' },
    ]);
    expect(topLevelSpans("{}")).toEqual([]);
    expect(topLevelSpans("3")).toBeNull();
  });
});
