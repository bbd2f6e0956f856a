/**
 * What a request asks its output to be, and the program that enforces it. A constraint is one of: any JSON
 * object, a JSON Schema, a regular expression the whole output matches, or one of a list of strings.
 * `constraintKey` names a constraint canonically (the same schema with its keys in another order has the
 * same key), so compiled grammars are cached and shared by it.
 */

import { MultiloraError } from "../errors.ts";
import type { FamilyName as ToolFamily } from "../tools/families.ts";
import { Budget } from "./budget.ts";
import { GrammarBuilder } from "./byte-grammar.ts";
import { literalDfa, minimize, unionDfa } from "./char-automaton.ts";
import { compileJsonSchema } from "./json-schema.ts";
import { fullMatchDfa, RegexError } from "./regex.ts";
import { type ToolMode, type ToolSpec, writeToolCallGrammar } from "./tool-grammar.ts";

export type ConstraintSpec =
  | { readonly kind: "json_object" }
  | { readonly kind: "json_schema"; readonly schema: unknown }
  | { readonly kind: "regex"; readonly pattern: string }
  | { readonly kind: "choice"; readonly choices: readonly string[] }
  | {
      readonly kind: "tool_calls";
      readonly family: ToolFamily;
      readonly tools: readonly ToolSpec[];
      readonly mode: ToolMode;
      readonly parallel: boolean;
    };

/** JSON with object keys sorted: equal for equal schemas whatever their key order. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) =>
      a < b ? -1 : a > b ? 1 : 0,
    );
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

export function constraintKey(spec: ConstraintSpec): string {
  const text = canonicalJson(spec);
  return new Bun.CryptoHasher("sha256").update(text).digest("hex");
}

/** The program of a constraint; throws MultiloraError (invalid_schema, unsupported_schema, constraint_too_complex). */
export function compileConstraint(spec: ConstraintSpec, timeoutMs: number): Int32Array {
  const budget = new Budget(timeoutMs);
  switch (spec.kind) {
    case "json_object":
      return compileJsonSchema({ type: "object" }, budget);
    case "json_schema":
      return compileJsonSchema(spec.schema, budget);
    case "regex": {
      let dfa: ReturnType<typeof minimize>;
      try {
        dfa = minimize(fullMatchDfa(spec.pattern, budget));
      } catch (e) {
        if (e instanceof RegexError)
          throw new MultiloraError(`regex: ${e.message}`, { code: "unsupported_schema" });
        throw e;
      }
      return textProgram(dfa, budget, "the regex matches no text");
    }
    case "choice":
      return textProgram(
        minimize(unionDfa(spec.choices.map(literalDfa), budget)),
        budget,
        "choice lists no string",
      );
    case "tool_calls": {
      const grammar = new GrammarBuilder(budget);
      return grammar.program(
        writeToolCallGrammar(grammar, spec.family, spec.tools, spec.mode, spec.parallel, budget),
      );
    }
  }
}

function textProgram(dfa: ReturnType<typeof minimize>, budget: Budget, empty: string): Int32Array {
  if (!dfa) throw new MultiloraError(empty, { code: "invalid_schema" });
  const grammar = new GrammarBuilder(budget);
  const root = grammar.declare("text");
  grammar.define(root, (nfa) => nfa.chars(nfa.start, nfa.accept, dfa, "raw"));
  return grammar.program(root);
}
