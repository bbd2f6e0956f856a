/**
 * The grammar of a model's tool calls: each call is written in its family's syntax (src/tools/families.ts:
 * the texts around a call, as the model was trained to write them) around the arguments, a JSON value of
 * that tool's parameters schema.
 *
 *   required / a named tool:  the whole output is calls (one, or several with parallel_tool_calls)
 *   auto:                     free text in which no call starts, then optionally calls: once the model
 *                             writes the family's opener, the rest of the call is constrained
 *   none:                     free text in which no call starts
 */
import { FAMILIES, type Family, type FamilyName } from "../tools/families.ts";
import type { Budget } from "./budget.ts";
import type { GrammarBuilder, RuleNfa } from "./byte-grammar.ts";
import { type CharDfa, intersectDfa, minimize } from "./char-automaton.ts";
import { ANY, chars, subtract } from "./charset.ts";
import { complementDfa, jsonSchemaRule } from "./json-schema.ts";
import { searchDfa } from "./regex.ts";

export type ToolMode = "auto" | "required" | "none" | { readonly name: string };

export interface ToolSpec {
  readonly name: string;
  /** The tool's parameters (a JSON Schema); absent: any object. */
  readonly parameters?: unknown;
}

/** The tags in the families' call texts (`<tool_call>`, `[TOOL_CALLS]`), which tokenizers may have as single added or special tokens. */
export const FAMILY_TEXTS: readonly string[] = [
  ...new Set(
    Object.values(FAMILIES).flatMap((f) =>
      [
        ...f.openers.map((o) => o.text),
        f.syntax.start,
        f.syntax.beforeArguments("x"),
        f.syntax.afterArguments,
        f.syntax.end,
      ].flatMap((text) => text.match(/<\/?[a-z_]+>|<\|[a-z_]+\|>|\[[A-Z_]+\]/g) ?? []),
    ),
  ),
];

function escapeRegex(text: string): string {
  return text.replace(/[\\^$.*+?()[\]{}|/-]/g, "\\$&");
}

/**
 * Free text in which no call starts: no opener that may appear anywhere, and, where an opener starts a
 * call at the start of the message (Llama's bare JSON), a first non-space character other than its first.
 */
function freeText(family: Family, budget: Budget): CharDfa {
  let dfa: CharDfa | null = null;
  for (const opener of family.openers) {
    let part: CharDfa;
    if (!opener.atMessageStart) {
      part = complementDfa(minimize(searchDfa(escapeRegex(opener.text), budget)) as CharDfa);
    } else {
      const first = opener.text.codePointAt(0) as number;
      const space = chars(" \t\n\r");
      const ranges = (set: readonly number[], to: number) =>
        Array.from({ length: set.length / 2 }, (_, i) => ({
          lo: set[2 * i] as number,
          hi: set[2 * i + 1] as number,
          to,
        }));
      // state 0: only whitespace so far; 1: past the first other character
      part = {
        accepting: [true, true],
        trans: [
          [...ranges(space, 0), ...ranges(subtract(subtract(ANY, space), [first, first]), 1)].sort(
            (a, b) => a.lo - b.lo,
          ),
          ranges(ANY, 1),
        ],
      };
    }
    dfa = minimize(dfa ? intersectDfa(dfa, part, budget) : part);
  }
  return dfa as CharDfa;
}

/** The rule of a tool-call constraint; throws SchemaProblems when a tool's parameters cannot be enforced. */
export function writeToolCallGrammar(
  grammar: GrammarBuilder,
  familyName: FamilyName,
  tools: readonly ToolSpec[],
  mode: ToolMode,
  parallel: boolean,
  budget: Budget,
): number {
  const family = FAMILIES[familyName];
  const { syntax } = family;
  const chosen =
    mode === "none" ? [] : typeof mode === "object" ? tools.filter((t) => t.name === mode.name) : tools;
  // Each tool's arguments are its own root schema (its $refs are relative to it).
  const argumentRules = chosen.map((t) =>
    jsonSchemaRule(grammar, t.parameters ?? { type: "object" }, budget),
  );

  const call = (nfa: RuleNfa, from: number, to: number) => {
    chosen.forEach((tool, i) => {
      nfa.sequence(from, to, [
        (f, t) => nfa.literal(f, t, syntax.beforeArguments(tool.name)),
        (f, t) => nfa.call(f, argumentRules[i] as number, t),
        (f, t) => nfa.literal(f, t, syntax.afterArguments),
      ]);
    });
  };
  /** The calls of one answer: one, or with parallel_tool_calls one or more. */
  const calls = (nfa: RuleNfa, from: number, to: number) => {
    const first = nfa.add();
    const last = nfa.add();
    nfa.literal(from, first, syntax.start);
    call(nfa, first, last);
    if (parallel) {
      const more = nfa.add();
      nfa.literal(last, more, syntax.separator);
      call(nfa, more, last);
    }
    nfa.literal(last, to, syntax.end);
  };

  const root = grammar.declare(`tool-calls:${family.name}`);
  // Free text is a rule of its own (no calls inside), so its masks are cached and shared.
  const text = mode === "auto" || mode === "none" ? grammar.declare(`free-text:${family.name}`) : -1;
  if (text >= 0)
    grammar.define(text, (nfa) => nfa.chars(nfa.start, nfa.accept, freeText(family, budget), "raw"));
  grammar.define(root, (nfa) => {
    if (mode === "none") return nfa.call(nfa.start, text, nfa.accept);
    if (mode !== "auto") return calls(nfa, nfa.start, nfa.accept);
    // auto: text, then calls after an opener that may appear anywhere; calls alone where one starts the message
    const afterText = nfa.add();
    nfa.call(nfa.start, text, afterText);
    nfa.epsilon(afterText, nfa.accept);
    for (const opener of family.openers) {
      if (opener.atMessageStart) calls(nfa, nfa.start, nfa.accept);
      else if (syntax.start.startsWith(opener.text) || syntax.beforeArguments("").startsWith(opener.text)) {
        calls(nfa, afterText, nfa.accept); // the opener is the calls' own first text
      } else {
        const opened = nfa.add();
        nfa.literal(afterText, opened, opener.text);
        calls(nfa, opened, nfa.accept);
      }
    }
  });
  return root;
}
