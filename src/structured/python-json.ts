/**
 * JSON text as Python's `json.dumps(json.loads(text))` writes it with default arguments: separators ", "
 * and ": ", non-ASCII characters kept (as with ensure_ascii=False),
 * integers exactly as written, floats in Python's repr. `multilora grammar check --batch` serialises test
 * instances this way before tokenizing them, as the JSON Schema benchmarks do.
 */

class PyFloat {
  constructor(readonly value: number) {}
}
class PyInt {
  constructor(readonly digits: string) {}
}

type PyValue = null | boolean | string | PyFloat | PyInt | PyValue[] | Map<string, PyValue>;

/** Parses JSON keeping integers' digits and telling integers from floats, as Python's json.loads does. */
export function parsePython(text: string): PyValue {
  let i = 0;
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i] as string)) i++;
  };
  const fail = (): never => {
    throw new SyntaxError(`invalid JSON at offset ${i}`);
  };
  const value = (): PyValue => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const out = new Map<string, PyValue>();
      ws();
      if (text[i] === "}") {
        i++;
        return out;
      }
      for (;;) {
        ws();
        const key = value();
        if (typeof key !== "string") fail();
        ws();
        if (text[i++] !== ":") fail();
        out.set(key as string, value());
        ws();
        if (text[i] === ",") i++;
        else if (text[i++] === "}") return out;
        else fail();
      }
    }
    if (c === "[") {
      i++;
      const out: PyValue[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return out;
      }
      for (;;) {
        out.push(value());
        ws();
        if (text[i] === ",") i++;
        else if (text[i++] === "]") return out;
        else fail();
      }
    }
    if (c === '"') {
      let end = i + 1;
      while (end < text.length && text[end] !== '"') end += text[end] === "\\" ? 2 : 1;
      if (end >= text.length) fail();
      const literal = text.slice(i, end + 1);
      i = end + 1;
      try {
        return JSON.parse(literal) as string; // checks the escapes and control characters
      } catch {
        return fail();
      }
    }
    const literal = /^(?:true|false|null)/.exec(text.slice(i));
    if (literal) {
      i += literal[0].length;
      return literal[0] === "null" ? null : literal[0] === "true";
    }
    const num = /^-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i));
    if (!num) fail();
    i += (num as RegExpExecArray)[0].length;
    const [raw, frac, exp] = num as RegExpExecArray;
    if (frac === undefined && exp === undefined) return new PyInt(raw.replace(/^-0$/, "0"));
    return new PyFloat(Number(raw));
  };
  const out = value();
  ws();
  if (i !== text.length) fail();
  return out;
}

/** Python's repr of a float. */
function floatRepr(x: number): string {
  if (Number.isNaN(x)) return "NaN";
  if (!Number.isFinite(x)) return x > 0 ? "Infinity" : "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mantissa, expText] = x.toExponential().split("e") as [string, string];
  const exp = Number(expText);
  const negative = mantissa.startsWith("-");
  const digits = mantissa.replace("-", "").replace(".", "");
  let out: string;
  if (exp >= -4 && exp < 16) {
    if (exp < 0) out = `0.${"0".repeat(-exp - 1)}${digits}`;
    else if (digits.length <= exp + 1) out = `${digits}${"0".repeat(exp + 1 - digits.length)}.0`;
    else out = `${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
  } else {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    out = `${m}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  }
  return negative ? `-${out}` : out;
}

function stringRepr(s: string): string {
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0) as number;
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (cp < 0x20) out += `\\u${cp.toString(16).padStart(4, "0")}`;
    else out += ch;
  }
  return `${out}"`;
}

export function dumpPython(v: PyValue): string {
  if (v === null) return "null";
  if (v === true) return "true";
  if (v === false) return "false";
  if (typeof v === "string") return stringRepr(v);
  if (v instanceof PyInt) return v.digits;
  if (v instanceof PyFloat) return floatRepr(v.value);
  if (Array.isArray(v)) return `[${v.map(dumpPython).join(", ")}]`;
  return `{${[...v].map(([k, x]) => `${stringRepr(k)}: ${dumpPython(x)}`).join(", ")}}`;
}

/** `json.dumps(json.loads(text))`. */
export function pythonDumps(text: string): string {
  return dumpPython(parsePython(text));
}
