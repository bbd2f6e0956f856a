/**
 * JSON Schema (2020-12, and draft-07 / draft-04 schemas as users send them) to a grammar.
 *
 * A schema is first flattened into alternatives, each a conjunction of plain assertions (`Base`): `$ref`,
 * `allOf`, `anyOf` and `oneOf` are resolved, merged and distributed; then each alternative is written as
 * grammar: strings, objects and arrays as their own rules (so recursion through `$ref` works, and the C
 * matcher can share a string rule's masks across schemas), numbers and literals inline.
 *
 * Nothing is loosened: a keyword that would change what is valid and that the grammar does not enforce is
 * a problem, reported with its JSON pointer; all problems of a schema are reported together. Where the
 * exact language cannot be written, the grammar is stricter (documented in docs/structured-output.md:
 * properties in definition order, no exponent on bounded numbers, 1.0 not an integer, ...).
 */
import { MultiloraError } from "../errors.ts";
import type { Budget } from "./budget.ts";
import { GrammarBuilder, type RuleNfa } from "./byte-grammar.ts";
import {
  type CharDfa,
  dfaAccepts,
  intersectDfa,
  literalDfa,
  minimize,
  repeatDfa,
  unionDfa,
} from "./char-automaton.ts";
import { ANY } from "./charset.ts";
import { FORMATS, formatDfa } from "./formats.ts";
import { type Bound, type Decimal, decimalOf, MAX_MULTIPLE, multipleParts, numberDfa } from "./numbers.ts";
import { RegexError, searchDfa } from "./regex.ts";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

/** A subschema and where it is. */
interface Located {
  schema: Json;
  pointer: string;
  /** The absolute URI of the schema resource it is in (references inside it are relative to this). */
  base: string;
}

/** The base URI of a schema without an $id of its own. */
const ROOT_URI = "urn:multilora:schema";

function resolveUri(ref: string, base: string): string | null {
  try {
    return new URL(ref, base).href;
  } catch {
    return ref.startsWith("#") ? `${base.split("#")[0]}${ref}` : null;
  }
}

const NULL = 1;
const BOOLEAN = 2;
const INTEGER = 4;
const FRACTION = 8; // numbers that are not integers
const STRING = 16;
const OBJECT = 32;
const ARRAY = 64;
const ALL_TYPES = 127;
const TYPE_BITS: Record<string, number> = {
  null: NULL,
  boolean: BOOLEAN,
  integer: INTEGER,
  number: INTEGER | FRACTION,
  string: STRING,
  object: OBJECT,
  array: ARRAY,
};

/** Whitespace between tokens: JSON's four characters, runs of at most this many. */
export const MAX_WHITESPACE = 12;
/** A maxLength above this limits strings to this many characters; a minLength above it is refused. */
export const MAX_BOUNDED_LENGTH = 256;
/** The same for maxItems / minItems. */
export const MAX_BOUNDED_ITEMS = 64;
/** minProperties / maxProperties above this are refused (the object's rule counts its members). */
export const MAX_COUNTED_PROPERTIES = 32;
/** patternProperties patterns of one object (the keys are split by which patterns match: 2^n kinds). */
const MAX_PATTERN_PROPERTIES = 4;
/** anyOf / oneOf combinations of one schema after distributing over allOf. */
const MAX_ALTERNATIVES = 64;

interface ObjectPart {
  props: Map<string, Located>;
  /** patternProperties: keys the pattern matches (anywhere) take the schema too. */
  patterns: { pattern: string; schema: Located }[];
  /** For keys neither listed nor matched; null: any value. */
  additional: Located | null;
}

interface ArrayPart {
  prefix: Located[];
  items: Located | null; // null: any value
}

/** One alternative: a conjunction of plain assertions. */
interface Base {
  types: number;
  enum: Json[] | null;
  minLength: number;
  maxLength: number | null;
  patterns: string[];
  formats: string[];
  minimum: Bound | null;
  maximum: Bound | null;
  multipleOf: Decimal[];
  objects: ObjectPart[];
  required: string[];
  minProperties: number;
  maxProperties: number | null;
  /** propertyNames: schemas every key satisfies. */
  keyNames: Located[];
  arrays: ArrayPart[];
  minItems: number;
  maxItems: number | null;
}

const ANY_BASE: Base = {
  types: ALL_TYPES,
  enum: null,
  minLength: 0,
  maxLength: null,
  patterns: [],
  formats: [],
  minimum: null,
  maximum: null,
  multipleOf: [],
  objects: [],
  required: [],
  minProperties: 0,
  maxProperties: null,
  keyNames: [],
  arrays: [],
  minItems: 0,
  maxItems: null,
};

function escapePointer(key: string): string {
  return key.replace(/~/g, "~0").replace(/\//g, "~1");
}

function isObject(x: Json): x is JsonObject {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

export function jsonEqual(a: Json, b: Json): boolean {
  if (typeof a === "number" && typeof b === "number") return a === b;
  if (Array.isArray(a) || Array.isArray(b)) {
    return (
      Array.isArray(a) &&
      Array.isArray(b) &&
      a.length === b.length &&
      a.every((x, i) => jsonEqual(x, b[i] as Json))
    );
  }
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a);
    return (
      ka.length === Object.keys(b).length && ka.every((k) => k in b && jsonEqual(a[k] as Json, b[k] as Json))
    );
  }
  return a === b;
}

function typeBitsOf(value: Json): number {
  if (value === null) return NULL;
  if (typeof value === "boolean") return BOOLEAN;
  if (typeof value === "number") return Number.isInteger(value) ? INTEGER : FRACTION;
  if (typeof value === "string") return STRING;
  return Array.isArray(value) ? ARRAY : OBJECT;
}

export class SchemaProblems extends MultiloraError {
  constructor(readonly problems: readonly string[]) {
    super(`the schema uses what structured output cannot enforce: ${problems.join("; ")}`, {
      code: "unsupported_schema",
    });
  }
}

class Compiler {
  readonly problems: string[] = [];
  readonly #legacyRef: boolean;
  readonly #ids = new Map<string, Located>();
  readonly #grammar: GrammarBuilder;
  readonly #rules = new Map<string, number>();
  readonly #flattening = new Set<string>();

  constructor(
    root: Json,
    readonly budget: Budget,
    grammar: GrammarBuilder,
  ) {
    const dialect = isObject(root) && typeof root.$schema === "string" ? root.$schema : "";
    this.#legacyRef = /draft-0[3-7]/.test(dialect);
    this.#grammar = grammar;
    this.#indexIds(root, "#", ROOT_URI);
  }

  #problem(pointer: string, message: string): void {
    const problem = `${pointer}: ${message}`;
    if (!this.problems.includes(problem)) this.problems.push(problem);
  }

  /** Records every schema resource ($id) and anchor by absolute URI, as references name them. */
  #indexIds(node: Json, pointer: string, base: string): void {
    if (Array.isArray(node)) {
      for (let i = 0; i < node.length; i++) this.#indexIds(node[i] as Json, `${pointer}/${i}`, base);
    }
    if (!isObject(node)) return;
    let here = base;
    if (typeof node.$id === "string") {
      const id = resolveUri(node.$id, base);
      if (id) here = id.split("#")[0] as string;
    }
    if (pointer === "#" || here !== base) this.#ids.set(here, { schema: node, pointer, base: here });
    if (typeof node.$anchor === "string")
      this.#ids.set(`${here}#${node.$anchor}`, { schema: node, pointer, base: here });
    for (const [k, v] of Object.entries(node)) {
      if (k === "enum" || k === "const" || k === "examples" || k === "default") continue;
      this.#indexIds(v, `${pointer}/${escapePointer(k)}`, here);
    }
  }

  #resolve(ref: string, base: string, at: string): Located | null {
    const full = resolveUri(ref, base);
    const hash = full?.indexOf("#") ?? -1;
    const uri = full && hash >= 0 ? full.slice(0, hash) : full;
    const fragment = full && hash >= 0 ? decodeURIComponent(full.slice(hash + 1)) : "";
    const resource = uri === null ? undefined : this.#ids.get(uri);
    if (resource) {
      if (fragment === "") return resource;
      if (!fragment.startsWith("/")) {
        const anchor = this.#ids.get(`${uri}#${fragment}`);
        if (anchor) return anchor;
      } else {
        let node: Json = resource.schema;
        let pointer = resource.pointer;
        let ok = true;
        for (const raw of fragment.slice(1).split("/")) {
          const key = raw.replace(/~1/g, "/").replace(/~0/g, "~");
          if (Array.isArray(node) && /^\d+$/.test(key)) node = node[Number(key)] as Json;
          else if (isObject(node) && key in node) node = node[key] as Json;
          else ok = false;
          if (!ok || node === undefined) {
            ok = false;
            break;
          }
          pointer += `/${escapePointer(key)}`;
        }
        // A subschema's own $id starts a new resource: references inside it are relative to that.
        if (ok) return { schema: node, pointer, base: this.#baseOf(node, resource.base) };
      }
    }
    this.#problem(
      at,
      `$ref "${ref}" is not a reference inside this schema (remote references are not fetched)`,
    );
    return null;
  }

  #baseOf(node: Json, base: string): string {
    if (!isObject(node) || typeof node.$id !== "string") return base;
    return resolveUri(node.$id, base)?.split("#")[0] ?? base;
  }

  // ---------------------------------------------------------------------------------------- flattening

  /** The alternatives of a conjunction of subschemas. */
  flatten(conj: readonly Located[]): Base[] {
    let out: Base[] = [ANY_BASE];
    for (const s of conj) {
      out = this.#product(out, this.#flattenOne(s));
      if (out.length === 0) break;
    }
    return out;
  }

  #product(a: Base[], b: Base[]): Base[] {
    const out: Base[] = [];
    for (const x of a) {
      for (const y of b) {
        const m = merge(x, y);
        if (m) out.push(m);
        this.budget.check();
      }
    }
    if (out.length > MAX_ALTERNATIVES) {
      throw new MultiloraError(`the schema's anyOf/oneOf combinations exceed ${MAX_ALTERNATIVES}`, {
        code: "constraint_too_complex",
      });
    }
    return out;
  }

  #flattenOne(located: Located): Base[] {
    const { schema, pointer } = located;
    const base = this.#baseOf(schema, located.base);
    if (schema === true) return [ANY_BASE];
    if (schema === false) return [];
    if (!isObject(schema)) {
      this.#problem(pointer, "a schema must be an object or a boolean");
      return [ANY_BASE];
    }
    if (this.#flattening.has(pointer)) {
      this.#problem(
        pointer,
        "a $ref cycle that reads no text (through allOf/anyOf/$ref, not inside properties or items)",
      );
      return [];
    }
    this.#flattening.add(pointer);
    try {
      let out: Base[] = [this.#assertions(schema, pointer, base)];
      if (typeof schema.$ref === "string") {
        const target = this.#resolve(schema.$ref, base, `${pointer}/$ref`);
        if (target) {
          const resolved = this.#flattenOne(target);
          if (this.#legacyRef) return resolved; // draft-07 and before: siblings of $ref are ignored
          out = this.#product(out, resolved);
        }
      }
      if ("$dynamicRef" in schema) this.#problem(`${pointer}/$dynamicRef`, "$dynamicRef is not supported");
      const list = (key: string): Json[] | null => {
        const v = schema[key];
        if (v === undefined) return null;
        if (!Array.isArray(v) || v.length === 0) {
          this.#problem(`${pointer}/${key}`, `${key} must be a non-empty array`);
          return null;
        }
        return v;
      };
      const allOf = list("allOf");
      if (allOf) {
        allOf.forEach((s, i) => {
          out = this.#product(out, this.#flattenOne({ schema: s, pointer: `${pointer}/allOf/${i}`, base }));
        });
      }
      const anyOf = list("anyOf");
      if (anyOf) {
        out = this.#product(
          out,
          anyOf.flatMap((s, i) => this.#flattenOne({ schema: s, pointer: `${pointer}/anyOf/${i}`, base })),
        );
      }
      const oneOf = list("oneOf");
      if (oneOf) {
        const options = oneOf.map((s, i) =>
          this.#flattenOne({ schema: s, pointer: `${pointer}/oneOf/${i}`, base }),
        );
        for (let i = 0; i < options.length; i++) {
          for (let j = i + 1; j < options.length; j++) {
            if (
              !(options[i] as Base[]).every((x) => (options[j] as Base[]).every((y) => this.#disjoint(x, y)))
            ) {
              this.#problem(
                `${pointer}/oneOf`,
                `oneOf alternatives ${i} and ${j} may both match one value (only oneOf over alternatives of different types, enums or const-valued required properties is enforced)`,
              );
              return out;
            }
          }
        }
        out = this.#product(out, options.flat());
      }
      return out;
    } finally {
      this.#flattening.delete(pointer);
    }
  }

  /** Whether no value can satisfy both alternatives (a sufficient test). */
  #disjoint(x: Base, y: Base): boolean {
    if ((x.types & y.types) === 0) return true;
    if (x.enum && y.enum && !x.enum.some((a) => (y.enum as Json[]).some((b) => jsonEqual(a, b)))) return true;
    if (x.enum?.every((v) => (typeBitsOf(v) & y.types) === 0)) return true;
    if (y.enum?.every((v) => (typeBitsOf(v) & x.types) === 0)) return true;
    // objects told apart by a required property with const / enum values (a discriminator)
    if ((x.types & y.types & ~OBJECT) === 0) {
      for (const name of x.required) {
        if (!y.required.includes(name)) continue;
        const vx = this.#constValues(x, name);
        const vy = this.#constValues(y, name);
        if (vx && vy && !vx.some((a) => vy.some((b) => jsonEqual(a, b)))) return true;
      }
      // or by a property one requires and the other does not allow at all
      if (
        x.required.some((name) => this.#forbids(y, name)) ||
        y.required.some((name) => this.#forbids(x, name))
      )
        return true;
    }
    return false;
  }

  /** Whether an object alternative allows no property `name` (not listed, no pattern, additionalProperties false). */
  #forbids(b: Base, name: string): boolean {
    return b.objects.some(
      (p) =>
        !p.props.has(name) &&
        p.patterns.length === 0 &&
        p.additional !== null &&
        this.flatten([p.additional]).length === 0,
    );
  }

  #constValues(b: Base, name: string): Json[] | null {
    for (const part of b.objects) {
      const loc = part.props.get(name);
      if (!loc) continue;
      const alts = this.flatten([loc]);
      if (alts.length > 0 && alts.every((a) => a.enum)) return alts.flatMap((a) => a.enum as Json[]);
    }
    return null;
  }

  #validPattern(pattern: string): boolean {
    try {
      searchDfa(pattern, this.budget);
      return true;
    } catch (e) {
      if (!(e instanceof RegexError)) throw e;
      return false;
    }
  }

  /** The plain assertions of one schema object (applicators are flattened by the caller). */
  #assertions(s: JsonObject, pointer: string, base: string): Base {
    const at = (k: string) => `${pointer}/${escapePointer(k)}`;
    const b: Base = {
      ...ANY_BASE,
      patterns: [],
      formats: [],
      multipleOf: [],
      objects: [],
      required: [],
      keyNames: [],
      arrays: [],
    };
    const count = (k: string): number | null => {
      const v = s[k];
      if (v === undefined) return null;
      if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
        this.#problem(at(k), `${k} must be a non-negative integer`);
        return null;
      }
      return v;
    };
    const num = (k: string): number | null => {
      const v = s[k];
      if (v === undefined || typeof v === "boolean") return null;
      if (typeof v !== "number") {
        this.#problem(at(k), `${k} must be a number`);
        return null;
      }
      return v;
    };
    const sub = (k: string): Located | null =>
      k in s ? { schema: s[k] as Json, pointer: at(k), base } : null;
    for (const key of Object.keys(s)) {
      const v = s[key] as Json;
      switch (key) {
        case "type": {
          const names = typeof v === "string" ? [v] : Array.isArray(v) ? v : null;
          if (!names || names.some((n) => typeof n !== "string" || !(n in TYPE_BITS))) {
            this.#problem(at(key), "type must be a type name or an array of them");
            break;
          }
          b.types = names.reduce((m: number, n) => m | (TYPE_BITS[n as string] as number), 0);
          break;
        }
        case "enum":
          if (!Array.isArray(v)) this.#problem(at(key), "enum must be an array");
          else b.enum = v;
          break;
        case "const":
          b.enum = [v];
          break;
        case "minLength":
          b.minLength = count(key) ?? 0;
          if (b.minLength > MAX_BOUNDED_LENGTH)
            this.#problem(at(key), `minLength above ${MAX_BOUNDED_LENGTH}`);
          break;
        case "maxLength":
          b.maxLength = count(key);
          break;
        case "pattern":
          if (typeof v !== "string") this.#problem(at(key), "pattern must be a string");
          else {
            try {
              searchDfa(v, this.budget);
              b.patterns.push(v);
            } catch (e) {
              if (!(e instanceof RegexError)) throw e;
              this.#problem(at(key), `pattern: ${e.message}`);
            }
          }
          break;
        case "format":
          if (typeof v !== "string" || formatDfa(v, this.budget) === undefined) {
            this.#problem(
              at(key),
              `format "${String(v)}" is not enforced (${Object.keys(FORMATS).join(", ")} are)`,
            );
          } else b.formats.push(v);
          break;
        case "minimum":
        case "exclusiveMinimum":
        case "maximum":
        case "exclusiveMaximum": {
          const n = num(key);
          if (n === null) break;
          const lower = key.endsWith("inimum");
          const legacy = typeof s[lower ? "exclusiveMinimum" : "exclusiveMaximum"] === "boolean";
          const bound = {
            value: decimalOf(n),
            exclusive:
              key.startsWith("exclusive") ||
              (legacy && s[lower ? "exclusiveMinimum" : "exclusiveMaximum"] === true),
          };
          if (lower) b.minimum = tighter(b.minimum, bound, 1);
          else b.maximum = tighter(b.maximum, bound, -1);
          break;
        }
        case "multipleOf": {
          const n = num(key);
          if (n !== null && n > 0) {
            const m = decimalOf(n);
            if (multipleParts(m).p > MAX_MULTIPLE) {
              this.#problem(at(key), `multipleOf ${n}: its significant digits are above ${MAX_MULTIPLE}`);
            } else b.multipleOf.push(m);
          } else if (n !== null) this.#problem(at(key), "multipleOf must be greater than 0");
          break;
        }
        case "properties":
        case "additionalProperties":
          break; // read below, together
        case "required":
          if (!Array.isArray(v) || v.some((n) => typeof n !== "string"))
            this.#problem(at(key), "required must be an array of strings");
          else b.required = [...new Set(v as string[])];
          break;
        case "patternProperties":
          if (!isObject(v)) this.#problem(at(key), "patternProperties must be an object");
          else if (Object.keys(v).length > MAX_PATTERN_PROPERTIES) {
            this.#problem(at(key), `more than ${MAX_PATTERN_PROPERTIES} patternProperties patterns`);
          } else {
            for (const pattern of Object.keys(v)) {
              try {
                searchDfa(pattern, this.budget);
              } catch (e) {
                if (!(e instanceof RegexError)) throw e;
                this.#problem(`${at(key)}/${escapePointer(pattern)}`, `pattern: ${e.message}`);
              }
            }
          }
          break; // read below, with properties
        case "propertyNames":
          b.keyNames = [{ schema: v, pointer: at(key), base }];
          break;
        case "minProperties":
        case "maxProperties": {
          const n = count(key);
          if (n !== null && n > MAX_COUNTED_PROPERTIES)
            this.#problem(at(key), `${key} above ${MAX_COUNTED_PROPERTIES}`);
          else if (n !== null && key === "minProperties") b.minProperties = n;
          else if (n !== null) b.maxProperties = n;
          break;
        }
        case "dependentRequired":
        case "dependentSchemas":
        case "dependencies":
          if (!isObject(v) || Object.keys(v).length > 0) this.#problem(at(key), `${key} is not supported`);
          break;
        case "unevaluatedProperties":
        case "unevaluatedItems":
          if (v !== true && !(isObject(v) && Object.keys(v).length === 0))
            this.#problem(at(key), `${key} is not supported`);
          break;
        case "items":
        case "prefixItems":
        case "additionalItems":
          break; // below
        case "minItems":
          b.minItems = count(key) ?? 0;
          if (b.minItems > MAX_BOUNDED_ITEMS) this.#problem(at(key), `minItems above ${MAX_BOUNDED_ITEMS}`);
          break;
        case "maxItems":
          b.maxItems = count(key);
          break;
        case "uniqueItems":
          if (v === true) this.#problem(at(key), "uniqueItems is not supported");
          break;
        case "contains":
        case "minContains":
        case "maxContains":
          if (key === "contains" || !("contains" in s)) {
            if (key === "contains") this.#problem(at(key), "contains is not supported");
          }
          break;
        case "not": {
          // Only `not` over types (e.g. {"not": {"type": "null"}}): any other is refused.
          const t = isObject(v) ? v.type : undefined;
          const names = typeof t === "string" ? [t] : Array.isArray(t) ? t : null;
          const onlyType = isObject(v) && Object.keys(v).length === 1;
          if (onlyType && names?.every((n) => typeof n === "string" && n in TYPE_BITS)) {
            b.types &= ~(names as Json[]).reduce((m: number, n) => m | (TYPE_BITS[n as string] as number), 0);
          } else this.#problem(at(key), 'not is supported only as {"not": {"type": ...}}');
          break;
        }
        case "if":
          if ("then" in s || "else" in s) this.#problem(at(key), "if/then/else is not supported");
          break;
        case "$ref":
        case "$dynamicRef":
        case "allOf":
        case "anyOf":
        case "oneOf":
          break;
        default:
          break; // annotations ($id, title, default, ...) and unknown keywords: no assertion
      }
    }
    // Objects: properties with additionalProperties (which applies to the names properties does not list).
    if ("properties" in s || "additionalProperties" in s || "patternProperties" in s) {
      const props = new Map<string, Located>();
      const p = s.properties;
      if (p !== undefined && !isObject(p)) this.#problem(at("properties"), "properties must be an object");
      else if (p)
        for (const [name, schema] of Object.entries(p))
          props.set(name, { schema, pointer: `${at("properties")}/${escapePointer(name)}`, base });
      const pp = s.patternProperties;
      const patterns = (
        pp !== undefined && isObject(pp) && Object.keys(pp).length <= MAX_PATTERN_PROPERTIES
          ? Object.entries(pp)
          : []
      )
        .filter(([pattern]) => this.#validPattern(pattern))
        .map(([pattern, schema]) => ({
          pattern,
          schema: { schema, pointer: `${at("patternProperties")}/${escapePointer(pattern)}`, base },
        }));
      const additional = sub("additionalProperties");
      b.objects.push({
        props,
        patterns,
        additional: additional && additional.schema !== true ? additional : null,
      });
    }
    // Arrays: prefixItems + items (2020-12), or items as an array + additionalItems (draft-07 and before).
    const items = s.items;
    if (Array.isArray(items) || "prefixItems" in s || (items !== undefined && items !== true)) {
      let prefix: Located[] = [];
      let rest: Located | null = null;
      if (Array.isArray(items)) {
        prefix = items.map((schema, i) => ({ schema, pointer: `${at("items")}/${i}`, base }));
        rest = sub("additionalItems");
      } else {
        const pi = s.prefixItems;
        if (Array.isArray(pi))
          prefix = pi.map((schema, i) => ({ schema, pointer: `${at("prefixItems")}/${i}`, base }));
        else if (pi !== undefined) this.#problem(at("prefixItems"), "prefixItems must be an array");
        rest = sub("items");
      }
      b.arrays.push({ prefix, items: rest && rest.schema !== true ? rest : null });
    }
    return b;
  }

  // ---------------------------------------------------------------------------------------- grammar

  /** A rule for the values of a conjunction of subschemas. */
  valueRule(conj: readonly Located[]): number {
    const key = `value:${conj
      .map((l) => l.pointer)
      .sort()
      .join("&")}`;
    const known = this.#rules.get(key);
    if (known !== undefined) return known;
    const rule = this.#grammar.declare(key);
    this.#rules.set(key, rule);
    const alternatives = this.flatten(conj);
    this.#grammar.define(rule, (nfa) => {
      for (const b of alternatives) this.#writeBase(nfa, nfa.start, nfa.accept, b);
    });
    return rule;
  }

  /** The rule of the root schema's values; throws SchemaProblems listing every problem. */
  rootRule(root: Json): number {
    const rule = this.valueRule([{ schema: root, pointer: "#", base: ROOT_URI }]);
    if (this.problems.length > 0) throw new SchemaProblems(this.problems);
    return rule;
  }

  #writeBase(nfa: RuleNfa, from: number, to: number, b: Base): void {
    this.budget.check();
    if (b.enum) {
      for (const value of b.enum) if (this.#allows(b, value)) this.#writeLiteral(nfa, from, to, value);
      return;
    }
    if (b.types & NULL) nfa.literal(from, to, "null");
    if (b.types & BOOLEAN) {
      nfa.literal(from, to, "true");
      nfa.literal(from, to, "false");
    }
    if (b.types & INTEGER) {
      const dfa = this.#numberDfa(b, !(b.types & FRACTION));
      if (dfa) nfa.chars(from, to, dfa, "raw");
    }
    if (b.types & STRING) {
      const rule = this.#stringRule(b);
      if (rule !== null) nfa.call(from, rule, to);
    }
    if (b.types & OBJECT) nfa.call(from, this.#objectRule(b), to);
    if (b.types & ARRAY) nfa.call(from, this.#arrayRule(b), to);
  }

  #numberDfa(b: Base, integer: boolean): CharDfa | null {
    const [first, ...more] = b.multipleOf;
    let dfa = numberDfa(
      { integer, minimum: b.minimum, maximum: b.maximum, multipleOf: first ?? null },
      this.budget,
    );
    for (const m of more) {
      if (!dfa) return null;
      const other = numberDfa({ integer, minimum: null, maximum: null, multipleOf: m }, this.budget);
      dfa = other && minimize(intersectDfa(dfa, other, this.budget));
    }
    return dfa;
  }

  /** The characters a string's keywords allow (null: none). */
  #stringChars(b: Base): CharDfa | null {
    const max = b.maxLength === null ? null : Math.min(b.maxLength, MAX_BOUNDED_LENGTH);
    if (max !== null && max < b.minLength) return null;
    let dfa: CharDfa | null = repeatDfa(ANY, Math.min(b.minLength, MAX_BOUNDED_LENGTH), max);
    const parts: CharDfa[] = [
      ...b.patterns.map((p) => minimize(searchDfa(p, this.budget))),
      ...b.formats.map((f) => formatDfa(f, this.budget) as CharDfa),
    ].filter((d): d is CharDfa => d !== null);
    if (b.patterns.length + b.formats.length > parts.length) return null; // a pattern that matches nothing
    for (const p of parts) {
      dfa = minimize(intersectDfa(p, dfa as CharDfa, this.budget));
      if (!dfa) return null;
    }
    return dfa;
  }

  #stringRule(b: Base): number | null {
    const key = `string:${b.minLength}:${b.maxLength}:${JSON.stringify(b.patterns)}:${JSON.stringify(b.formats)}`;
    const known = this.#rules.get(key);
    if (known !== undefined) return known;
    const dfa = this.#stringChars(b);
    if (!dfa) return null;
    const rule = this.#grammar.declare(key);
    this.#rules.set(key, rule);
    this.#grammar.define(rule, (nfa) => writeJsonString(nfa, nfa.start, nfa.accept, dfa));
    return rule;
  }

  /** A rule for keys: a string whose characters a DFA allows (a leaf rule, so its masks are shared). */
  #keyRule(content: CharDfa, key: string): number {
    const known = this.#rules.get(key);
    if (known !== undefined) return known;
    const rule = this.#grammar.declare(key);
    this.#rules.set(key, rule);
    this.#grammar.define(rule, (nfa) => writeJsonString(nfa, nfa.start, nfa.accept, content));
    return rule;
  }

  /** The characters propertyNames allows every key (null: any key). */
  #keyNamesDfa(b: Base): CharDfa | null | "none" {
    if (b.keyNames.length === 0) return null;
    const alternatives = this.flatten(b.keyNames).filter((k) => k.types & STRING);
    const dfas = alternatives.flatMap((k) => {
      if (k.enum)
        return k.enum.filter((v): v is string => typeof v === "string" && this.#allows(k, v)).map(literalDfa);
      const d = this.#stringChars(k);
      return d ? [d] : [];
    });
    if (dfas.length === 0) return "none";
    return minimize(unionDfa(dfas, this.budget)) ?? "none";
  }

  #objectRule(b: Base): number {
    const partKey = b.objects
      .map(
        (p) =>
          `${[...p.props].map(([k, l]) => `${JSON.stringify(k)}=${l.pointer}`).join(",")}~${p.patterns.map((x) => x.schema.pointer).join(",")}+${p.additional?.pointer ?? "*"}`,
      )
      .join("|");
    const key = `object:${partKey}:${JSON.stringify(b.required)}:${b.minProperties}:${b.maxProperties}:${b.keyNames.map((l) => l.pointer).join(",")}`;
    const known = this.#rules.get(key);
    if (known !== undefined) return known;
    const rule = this.#grammar.declare(key);
    this.#rules.set(key, rule);
    const keyNames = this.#keyNamesDfa(b);
    const nameAllowed = (name: string) =>
      keyNames === null || (keyNames !== "none" && dfaAccepts(keyNames, name));
    const matches = new Map<string, CharDfa>();
    const search = (pattern: string): CharDfa => {
      let d = matches.get(pattern);
      if (!d) {
        d = minimize(searchDfa(pattern, this.budget)) ?? repeatDfa([], 1, 0);
        matches.set(pattern, d);
      }
      return d;
    };
    // Names in definition order (then required names no properties list), each with its value's conjunction:
    // in each part, its own schema and those of the patterns that match, else its additionalProperties.
    const names: string[] = [];
    for (const part of b.objects)
      for (const name of part.props.keys()) if (!names.includes(name)) names.push(name);
    for (const name of b.required) if (!names.includes(name)) names.push(name);
    const valueConj = (name: string): Located[] =>
      b.objects.flatMap((p) => {
        const own = p.props.get(name);
        const matched = p.patterns.filter((x) => dfaAccepts(search(x.pattern), name)).map((x) => x.schema);
        return [
          ...(own ? [own] : []),
          ...matched,
          ...(!own && matched.length === 0 && p.additional ? [p.additional] : []),
        ];
      });
    const members = names
      .map((name) => ({ name, conj: valueConj(name), required: b.required.includes(name) }))
      .filter((m) => m.required || (nameAllowed(m.name) && this.flatten(m.conj).length > 0));
    const impossible = members.some(
      (m) => m.required && (!nameAllowed(m.name) || this.flatten(m.conj).length === 0),
    );
    // Other keys, by which patterns they match: each kind a key rule and a value conjunction.
    const patterns = [...new Set(b.objects.flatMap((p) => p.patterns.map((x) => x.pattern)))];
    const others: { keyRule: number; conj: Located[] }[] = [];
    for (let subset = 0; subset < 1 << patterns.length; subset++) {
      const inSet = (pattern: string) => ((subset >> patterns.indexOf(pattern)) & 1) === 1;
      const conj = b.objects.flatMap((p) => {
        const matched = p.patterns.filter((x) => inSet(x.pattern)).map((x) => x.schema);
        return matched.length > 0 ? matched : p.additional ? [p.additional] : [];
      });
      if (this.flatten(conj).length === 0) continue;
      let dfa: CharDfa | null =
        names.length === 0
          ? repeatDfa(ANY, 0, null)
          : complementDfa(unionDfa(names.map(literalDfa), this.budget));
      patterns.forEach((pattern, i) => {
        const d = search(pattern);
        if (dfa) dfa = minimize(intersectDfa(dfa, (subset >> i) & 1 ? d : complementDfa(d), this.budget));
      });
      if (dfa && keyNames !== null)
        dfa = keyNames === "none" ? null : minimize(intersectDfa(dfa, keyNames, this.budget));
      const content = dfa && minimize(dfa);
      if (!content) continue;
      others.push({
        keyRule: this.#keyRule(
          content,
          `key:${JSON.stringify([...names].sort())}:${patterns.filter(inSet).join("\u0000")}:${patterns.length}:${b.keyNames.map((l) => l.pointer).join(",")}`,
        ),
        conj,
      });
    }
    const min = b.minProperties;
    const max = b.maxProperties;
    // Members written so far, counted up to `cap` (beyond it, with no maximum, the count stays at cap).
    const cap = Math.max(1, max ?? min);
    this.#grammar.define(rule, (nfa) => {
      if (impossible || (max !== null && max < min)) return;
      const open = nfa.add();
      nfa.literal(nfa.start, open, "{");
      let none = nfa.add(); // nothing written yet
      writeWhitespace(nfa, open, none);
      let some = Array.from({ length: cap + 1 }, () => nfa.add()); // some[c]: c members written (c >= 1)
      const member = (
        from: number,
        to: number,
        key: (f: number, t: number) => void,
        conj: Located[],
        first: boolean,
      ) =>
        nfa.sequence(from, to, [
          ...(first
            ? []
            : [
                (f: number, t: number) => nfa.literal(f, t, ","),
                (f: number, t: number) => writeWhitespace(nfa, f, t),
              ]),
          key,
          (f: number, t: number) => writeWhitespace(nfa, f, t),
          (f: number, t: number) => nfa.literal(f, t, ":"),
          (f: number, t: number) => writeWhitespace(nfa, f, t),
          (f: number, t: number) => nfa.call(f, this.valueRule(conj), t),
          (f: number, t: number) => writeWhitespace(nfa, f, t),
        ]);
      /** One member, from nothing written to 1 and from each count c to c + 1; `into`: the states after. */
      const counted = (key: (f: number, t: number) => void, conj: Located[], into: number[]) => {
        if (max === 0) return;
        member(none, into[1] as number, key, conj, true);
        for (let c = 1; c <= cap; c++) {
          const next = c < cap ? c + 1 : max === null ? cap : -1; // past the maximum: no more members
          if (next > 0) member(some[c] as number, into[next] as number, key, conj, false);
        }
      };
      for (const m of members) {
        const literalKey = (f: number, t: number) => writeJsonString(nfa, f, t, literalDfa(m.name));
        const nextNone = nfa.add();
        const nextSome = some.map(() => nfa.add());
        counted(literalKey, m.conj, nextSome);
        if (!m.required) {
          nfa.epsilon(none, nextNone);
          for (let c = 1; c <= cap; c++) nfa.epsilon(some[c] as number, nextSome[c] as number);
        }
        none = nextNone;
        some = nextSome;
      }
      for (const other of others) counted((f, t) => nfa.call(f, other.keyRule, t), other.conj, some);
      if (min === 0) nfa.literal(none, nfa.accept, "}");
      for (let c = Math.max(1, min); c <= cap; c++) nfa.literal(some[c] as number, nfa.accept, "}");
    });
    return rule;
  }

  #arrayRule(b: Base): number {
    const partKey = b.arrays
      .map((p) => `${p.prefix.map((l) => l.pointer).join(",")}+${p.items?.pointer ?? "*"}`)
      .join("|");
    const key = `array:${partKey}:${b.minItems}:${b.maxItems}`;
    const known = this.#rules.get(key);
    if (known !== undefined) return known;
    const rule = this.#grammar.declare(key);
    this.#rules.set(key, rule);
    const itemConj = (i: number): Located[] | null => {
      const conj = b.arrays.flatMap((p) => {
        const own = i < p.prefix.length ? p.prefix[i] : p.items;
        return own ? [own] : [];
      });
      return this.flatten(conj).length > 0 ? conj : null;
    };
    const prefixLength = Math.max(0, ...b.arrays.map((p) => p.prefix.length));
    const max = b.maxItems === null ? null : Math.min(b.maxItems, MAX_BOUNDED_ITEMS);
    // Positions 0..last are written out; past `last` the items schema repeats (when unbounded).
    const last = Math.max(prefixLength, b.minItems, 1);
    this.#grammar.define(rule, (nfa) => {
      if (max !== null && max < b.minItems) return;
      const open = nfa.add();
      nfa.literal(nfa.start, open, "[");
      let at = nfa.add(); // before item 0
      writeWhitespace(nfa, open, at);
      const item = (from: number, to: number, i: number, conj: Located[]) =>
        nfa.sequence(from, to, [
          ...(i > 0
            ? [
                (f: number, t: number) => nfa.literal(f, t, ","),
                (f: number, t: number) => writeWhitespace(nfa, f, t),
              ]
            : []),
          (f: number, t: number) => nfa.call(f, this.valueRule(conj), t),
          (f: number, t: number) => writeWhitespace(nfa, f, t),
        ]);
      const limit = max === null ? last : max;
      for (let i = 0; ; i++) {
        if (i >= b.minItems) nfa.literal(at, nfa.accept, "]");
        if (i >= limit) {
          const conj = itemConj(i);
          if (max === null && conj) item(at, at, i, conj); // the repeating tail
          break;
        }
        const conj = itemConj(i);
        if (!conj) break;
        const next = nfa.add();
        item(at, next, i, conj);
        at = next;
      }
    });
    return rule;
  }

  #writeLiteral(nfa: RuleNfa, from: number, to: number, value: Json): void {
    if (value === null || typeof value === "boolean") nfa.literal(from, to, String(value));
    else if (typeof value === "number") {
      nfa.literal(from, to, JSON.stringify(value));
      if (Number.isInteger(value) && Math.abs(value) < 1e21)
        nfa.literal(from, to, `${JSON.stringify(value)}.0`);
    } else if (typeof value === "string") writeJsonString(nfa, from, to, literalDfa(value));
    else if (Array.isArray(value)) {
      nfa.sequence(from, to, [
        (f, t) => nfa.literal(f, t, "["),
        (f, t) => writeWhitespace(nfa, f, t),
        ...value.flatMap((v, i) => [
          ...(i > 0
            ? [
                (f: number, t: number) => nfa.literal(f, t, ","),
                (f: number, t: number) => writeWhitespace(nfa, f, t),
              ]
            : []),
          (f: number, t: number) => this.#writeLiteral(nfa, f, t, v),
          (f: number, t: number) => writeWhitespace(nfa, f, t),
        ]),
        (f, t) => nfa.literal(f, t, "]"),
      ]);
    } else {
      nfa.sequence(from, to, [
        (f, t) => nfa.literal(f, t, "{"),
        (f, t) => writeWhitespace(nfa, f, t),
        ...Object.entries(value).flatMap(([k, v], i) => [
          ...(i > 0
            ? [
                (f: number, t: number) => nfa.literal(f, t, ","),
                (f: number, t: number) => writeWhitespace(nfa, f, t),
              ]
            : []),
          (f: number, t: number) => writeJsonString(nfa, f, t, literalDfa(k)),
          (f: number, t: number) => writeWhitespace(nfa, f, t),
          (f: number, t: number) => nfa.literal(f, t, ":"),
          (f: number, t: number) => writeWhitespace(nfa, f, t),
          (f: number, t: number) => this.#writeLiteral(nfa, f, t, v),
          (f: number, t: number) => writeWhitespace(nfa, f, t),
        ]),
        (f, t) => nfa.literal(f, t, "}"),
      ]);
    }
  }

  /** Whether an enum/const value satisfies the alternative's other keywords. */
  #allows(b: Base, value: Json): boolean {
    if ((typeBitsOf(value) & b.types) === 0) return false;
    if (typeof value === "string") {
      const dfa = this.#stringChars(b);
      return dfa !== null && dfaAccepts(dfa, value);
    }
    if (typeof value === "number") {
      const dfa = this.#numberDfa(b, false);
      return dfa !== null && dfaAccepts(dfa, plainNumber(value));
    }
    if (Array.isArray(value) && (b.arrays.length > 0 || b.minItems > 0 || b.maxItems !== null)) {
      this.#problem("#", "enum/const arrays together with array keywords are not supported");
    }
    if (isObject(value) && (b.objects.length > 0 || b.required.length > 0)) {
      if (b.required.some((r) => !(r in value))) return false;
      if (b.objects.length > 0)
        this.#problem("#", "enum/const objects together with properties are not supported");
    }
    return true;
  }
}

function plainNumber(n: number): string {
  const d = decimalOf(n);
  return `${d.negative ? "-" : ""}${d.int}${d.frac ? `.${d.frac}` : ""}`;
}

/** Compares decimals: -1, 0, 1. */
function compareDecimal(a: Decimal, b: Decimal): number {
  if (a.negative !== b.negative) return a.negative ? -1 : 1;
  const mag =
    a.int.length !== b.int.length
      ? a.int.length - b.int.length
      : a.int !== b.int
        ? a.int < b.int
          ? -1
          : 1
        : a.frac.padEnd(b.frac.length, "0") < b.frac.padEnd(a.frac.length, "0")
          ? -1
          : a.frac.padEnd(b.frac.length, "0") > b.frac.padEnd(a.frac.length, "0")
            ? 1
            : 0;
  const s = Math.sign(mag);
  return a.negative ? -s : s;
}

/** The tighter of two bounds; dir 1: lower bounds (the larger wins), -1: upper bounds. */
function tighter(a: Bound | null, b: Bound, dir: number): Bound {
  if (!a) return b;
  const c = compareDecimal(a.value, b.value) * dir;
  if (c > 0) return a;
  if (c < 0) return b;
  return { value: a.value, exclusive: a.exclusive || b.exclusive };
}

function merge(a: Base, b: Base): Base | null {
  if (a === ANY_BASE) return b;
  if (b === ANY_BASE) return a;
  const types = a.types & b.types;
  if (types === 0) return null;
  let values: Json[] | null = a.enum ?? b.enum;
  if (a.enum && b.enum) values = a.enum.filter((x) => (b.enum as Json[]).some((y) => jsonEqual(x, y)));
  if (values && values.length === 0) return null;
  return {
    types,
    enum: values,
    minLength: Math.max(a.minLength, b.minLength),
    maxLength:
      a.maxLength === null
        ? b.maxLength
        : b.maxLength === null
          ? a.maxLength
          : Math.min(a.maxLength, b.maxLength),
    patterns: [...a.patterns, ...b.patterns],
    formats: [...new Set([...a.formats, ...b.formats])],
    minimum: b.minimum ? tighter(a.minimum, b.minimum, 1) : a.minimum,
    maximum: b.maximum ? tighter(a.maximum, b.maximum, -1) : a.maximum,
    multipleOf: [...a.multipleOf, ...b.multipleOf],
    objects: [...a.objects, ...b.objects],
    required: [...new Set([...a.required, ...b.required])],
    minProperties: Math.max(a.minProperties, b.minProperties),
    maxProperties:
      a.maxProperties === null
        ? b.maxProperties
        : b.maxProperties === null
          ? a.maxProperties
          : Math.min(a.maxProperties, b.maxProperties),
    keyNames: [...a.keyNames, ...b.keyNames],
    arrays: [...a.arrays, ...b.arrays],
    minItems: Math.max(a.minItems, b.minItems),
    maxItems:
      a.maxItems === null ? b.maxItems : b.maxItems === null ? a.maxItems : Math.min(a.maxItems, b.maxItems),
  };
}

/** A JSON string whose characters a DFA allows, quotes included. */
export function writeJsonString(nfa: RuleNfa, from: number, to: number, content: CharDfa): void {
  nfa.sequence(from, to, [
    (f, t) => nfa.literal(f, t, '"'),
    (f, t) => nfa.chars(f, t, content, "json"),
    (f, t) => nfa.literal(f, t, '"'),
  ]);
}

/** Whitespace between JSON tokens: JSON's four characters, in a run of at most MAX_WHITESPACE. */
export function writeWhitespace(nfa: RuleNfa, from: number, to: number): void {
  let at = from;
  nfa.epsilon(at, to);
  for (let i = 0; i < MAX_WHITESPACE; i++) {
    const next = nfa.add();
    for (const c of [0x20, 0x0a, 0x0d, 0x09]) nfa.byte(at, c, c, next);
    nfa.epsilon(next, to);
    at = next;
  }
}

/** Every string but those a DFA accepts (the DFA made total over ANY, accepting flipped). */
export function complementDfa(dfa: CharDfa): CharDfa {
  const n = dfa.accepting.length;
  const sink = n;
  const trans = dfa.trans.map((row) => {
    const out = [...row];
    let next = 0;
    const gaps: { lo: number; hi: number; to: number }[] = [];
    for (const t of row) {
      if (t.lo > next) gaps.push({ lo: next, hi: t.lo - 1, to: sink });
      next = t.hi + 1;
    }
    if (next <= 0x10ffff) gaps.push({ lo: next, hi: 0x10ffff, to: sink });
    return [...out, ...gaps].sort((x, y) => x.lo - y.lo);
  });
  trans.push([{ lo: 0, hi: 0x10ffff, to: sink }]);
  // Surrogates are not characters: keep them out of every transition.
  const clean = trans.map((row) =>
    row.flatMap((t) => {
      const parts: { lo: number; hi: number; to: number }[] = [];
      for (let i = 0; i < ANY.length; i += 2) {
        const lo = Math.max(t.lo, ANY[i] as number);
        const hi = Math.min(t.hi, ANY[i + 1] as number);
        if (lo <= hi) parts.push({ lo, hi, to: t.to });
      }
      return parts;
    }),
  );
  return { accepting: [...dfa.accepting.map((a) => !a), true], trans: clean };
}

/** The program of a JSON Schema; throws SchemaProblems (400 unsupported_schema) listing every problem. */
export function compileJsonSchema(schema: unknown, budget: Budget): Int32Array {
  const grammar = new GrammarBuilder(budget);
  return grammar.program(jsonSchemaRule(grammar, schema, budget));
}

/**
 * A rule of `grammar` for the values of a JSON Schema (a part of a larger grammar: tool calls); throws
 * SchemaProblems (400 unsupported_schema) listing every problem.
 */
export function jsonSchemaRule(grammar: GrammarBuilder, schema: unknown, budget: Budget): number {
  if (typeof schema !== "boolean" && !isObject(schema as Json)) {
    throw new MultiloraError("a JSON Schema must be an object or a boolean", { code: "invalid_schema" });
  }
  return new Compiler(schema as Json, budget, grammar).rootRule(schema as Json);
}
