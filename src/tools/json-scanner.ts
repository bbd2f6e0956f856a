/**
 * An incremental JSON scanner: fed one character at a time, it says whether the text so far is still the
 * start of a JSON object or array ("more"), has just ended one ("done"), or can no longer be one ("error").
 *
 * It finds where a value ends (a `}` inside a string is not the end) and rejects most invalid JSON as
 * soon as it appears, so that a tool-call parser can stop holding text back early. It is not the judge of
 * validity: numbers are scanned leniently, and the finished text is given to `JSON.parse`.
 */

export type ScanStatus = "more" | "done" | "error";

type State =
  | "start" // nothing yet: `{` or `[`
  | "value" // a value, after `:` or `,` in an array
  | "arrayStart" // after `[`: a value or `]`
  | "objectStart" // after `{`: a key or `}`
  | "key" // after `,` in an object: a key
  | "colon"
  | "after" // after a value in a container: `,` or the close
  | "string"
  | "escape"
  | "hex"
  | "number"
  | "literal"
  | "done"
  | "error";

const WHITESPACE = new Set([" ", "\t", "\n", "\r"]);
const ESCAPES = new Set(['"', "\\", "/", "b", "f", "n", "r", "t"]);
const NUMBER_CHARS = new Set([..."0123456789+-.eE"]);
const HEX = /^[0-9a-fA-F]$/;

export function isJsonWhitespace(c: string): boolean {
  return WHITESPACE.has(c);
}

export class JsonScanner {
  #state: State = "start";
  readonly #stack: ("{" | "[")[] = [];
  #stringIsKey = false;
  #hexLeft = 0;
  #literalLeft = "";

  get status(): ScanStatus {
    return this.#state === "done" ? "done" : this.#state === "error" ? "error" : "more";
  }

  /** Feeds one character (a code point); returns the status after it. */
  push(c: string): ScanStatus {
    this.#step(c);
    return this.status;
  }

  #step(c: string): void {
    switch (this.#state) {
      case "start":
        if (c === "{" || c === "[") this.#open(c);
        else this.#state = "error";
        return;
      case "value":
      case "arrayStart":
        if (WHITESPACE.has(c)) return;
        if (c === "]" && this.#state === "arrayStart") this.#close();
        else this.#startValue(c);
        return;
      case "objectStart":
      case "key":
        if (WHITESPACE.has(c)) return;
        if (c === '"') {
          this.#stringIsKey = true;
          this.#state = "string";
        } else if (c === "}" && this.#state === "objectStart") this.#close();
        else this.#state = "error";
        return;
      case "colon":
        if (WHITESPACE.has(c)) return;
        this.#state = c === ":" ? "value" : "error";
        return;
      case "after": {
        if (WHITESPACE.has(c)) return;
        const top = this.#stack.at(-1);
        if (c === ",") this.#state = top === "{" ? "key" : "value";
        else if ((c === "}" && top === "{") || (c === "]" && top === "[")) this.#close();
        else this.#state = "error";
        return;
      }
      case "string":
        if (c === '"') {
          if (this.#stringIsKey) this.#state = "colon";
          else this.#valueEnded();
        } else if (c === "\\") this.#state = "escape";
        else if ((c.codePointAt(0) ?? 0) < 0x20) this.#state = "error";
        return;
      case "escape":
        if (c === "u") {
          this.#hexLeft = 4;
          this.#state = "hex";
        } else this.#state = ESCAPES.has(c) ? "string" : "error";
        return;
      case "hex":
        if (!HEX.test(c)) this.#state = "error";
        else if (--this.#hexLeft === 0) this.#state = "string";
        return;
      case "number":
        if (NUMBER_CHARS.has(c)) return;
        // The number ended at the previous character; this one belongs to what follows it.
        this.#valueEnded();
        this.#step(c);
        return;
      case "literal":
        if (c !== this.#literalLeft[0]) {
          this.#state = "error";
          return;
        }
        this.#literalLeft = this.#literalLeft.slice(1);
        if (this.#literalLeft === "") this.#valueEnded();
        return;
      case "done":
        this.#state = "error";
        return;
      case "error":
        return;
    }
  }

  #startValue(c: string): void {
    if (c === "{" || c === "[") this.#open(c);
    else if (c === '"') {
      this.#stringIsKey = false;
      this.#state = "string";
    } else if (c === "-" || (c >= "0" && c <= "9")) this.#state = "number";
    else if (c === "t" || c === "f" || c === "n") {
      this.#literalLeft = { t: "rue", f: "alse", n: "ull" }[c];
      this.#state = "literal";
    } else this.#state = "error";
  }

  #open(c: "{" | "["): void {
    this.#stack.push(c);
    this.#state = c === "{" ? "objectStart" : "arrayStart";
  }

  #close(): void {
    this.#stack.pop();
    this.#valueEnded();
  }

  #valueEnded(): void {
    this.#state = this.#stack.length === 0 ? "done" : "after";
  }
}

/** One member of a JSON object or element of a JSON array, as its original text. */
export interface JsonSpan {
  /** The member's key (decoded); undefined for an array element. */
  key?: string;
  /** The value's original text. */
  text: string;
}

/**
 * The top-level members of a JSON object's text, or the elements of an array's, each value as its
 * original text. `text` must be valid JSON (checked by `JSON.parse` before); null if it is a scalar.
 */
export function topLevelSpans(text: string): JsonSpan[] | null {
  let i = skipWhitespace(text, 0);
  const open = text[i];
  if (open !== "{" && open !== "[") return null;
  const close = open === "{" ? "}" : "]";
  const spans: JsonSpan[] = [];
  i = skipWhitespace(text, i + 1);
  if (text[i] === close) return spans;
  for (;;) {
    let key: string | undefined;
    if (open === "{") {
      const keyEnd = skipString(text, i);
      key = JSON.parse(text.slice(i, keyEnd)) as string;
      i = skipWhitespace(text, keyEnd);
      i = skipWhitespace(text, i + 1); // the colon
    }
    const end = skipValue(text, i);
    spans.push(key === undefined ? { text: text.slice(i, end) } : { key, text: text.slice(i, end) });
    i = skipWhitespace(text, end);
    if (text[i] !== ",") return spans;
    i = skipWhitespace(text, i + 1);
  }
}

function skipWhitespace(text: string, i: number): number {
  let j = i;
  while (j < text.length && WHITESPACE.has(text[j] as string)) j++;
  return j;
}

/** The index after the string literal that starts at `i`. */
function skipString(text: string, i: number): number {
  let j = i + 1;
  while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
  return j + 1;
}

/** The index after the (valid) JSON value that starts at `i`. */
function skipValue(text: string, i: number): number {
  const c = text[i];
  if (c === '"') return skipString(text, i);
  if (c === "{" || c === "[") {
    let depth = 0;
    let j = i;
    while (j < text.length) {
      const d = text[j];
      if (d === '"') {
        j = skipString(text, j);
        continue;
      }
      if (d === "{" || d === "[") depth++;
      else if (d === "}" || d === "]") {
        depth--;
        if (depth === 0) return j + 1;
      }
      j++;
    }
    return j;
  }
  let j = i;
  while (j < text.length && !WHITESPACE.has(text[j] as string) && !",}]".includes(text[j] as string)) j++;
  return j;
}
