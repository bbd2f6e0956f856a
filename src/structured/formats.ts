/**
 * The string formats a grammar enforces, as regular expressions matched against the whole string. Each is
 * at least as strict as its RFC (stricter where the exact language is not regular or would be huge): a
 * valid value may be refused, an invalid one is never accepted. Other formats are refused at compile time.
 */
import type { Budget } from "./budget.ts";
import type { CharDfa } from "./char-automaton.ts";
import { minimize } from "./char-automaton.ts";
import { fullMatchDfa } from "./regex.ts";

const DATE =
  "(?:\\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|02-(?:0[1-9]|1\\d|2[0-8]))" +
  "|(?:\\d\\d(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)";
/** RFC 3339 full-time without leap seconds (a leap second is valid only at 23:59:60 UTC, offset included),
 * fractions of a second to 18 digits. */
const TIME = "(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(?:\\.\\d{1,18})?(?:[Zz]|[+-](?:[01]\\d|2[0-3]):[0-5]\\d)";
const OCTET = "(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)";
const IPV4 = `(?:${OCTET}\\.){3}${OCTET}`;
const LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
const ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]";
/** RFC 5321 dot-atom local parts (quoted ones are not generated) at a dotted domain or an IPv4 literal. */
const EMAIL = `${ATEXT}+(?:\\.${ATEXT}+)*@(?:(?:${LABEL}\\.)+${LABEL}|\\[${IPV4}\\])`;
const UNRESERVED = "A-Za-z0-9._~\\-";
const SUB_DELIMS = "!$&'()*+,;=";
const PCT = "%[0-9A-Fa-f]{2}";
const PCHAR = `(?:[${UNRESERVED}${SUB_DELIMS}:@]|${PCT})`;
/** RFC 3986 URI (a scheme is required); hosts are registered names or IPv4 (no IP literals in brackets). */
const URI =
  `[A-Za-z][A-Za-z0-9+.\\-]*:` +
  `(?://(?:(?:[${UNRESERVED}${SUB_DELIMS}:]|${PCT})*@)?(?:[${UNRESERVED}${SUB_DELIMS}]|${PCT})*(?::\\d*)?(?:/${PCHAR}*)*` +
  `|/(?:${PCHAR}+(?:/${PCHAR}*)*)?` +
  `|${PCHAR}+(?:/${PCHAR}*)*` +
  ")?" +
  `(?:\\?(?:${PCHAR}|[/?])*)?(?:#(?:${PCHAR}|[/?])*)?`;

/**
 * RFC 1123 host names, at most 8 labels of at most 30 characters (so never past 253 characters without
 * counting them), and no "--" in a label's third and fourth characters (reserved for IDNA A-labels, which
 * are not generated).
 */
const X = "[A-Za-z0-9]";
const H = "[A-Za-z0-9-]";
const HOST_LABEL = `(?:${X}|${X}${X}|${X}${H}${X}|${X}${H}(?:${X}${H}|-${X})${H}{0,25}${X})`;
const HOSTNAME = `(?:${HOST_LABEL}\\.){0,7}${HOST_LABEL}`;
/** RFC 4291 text form: eight groups, or fewer around one "::", the last two may be an IPv4 address. */
const IPV6 = (() => {
  const g = "[0-9a-fA-F]{1,4}";
  const groups = (n: number) => (n === 0 ? "" : `${g}(?::${g}){${n - 1}}`);
  const alternatives = [`(?:${g}:){7}${g}`, `(?:${g}:){6}${IPV4}`];
  for (let left = 0; left <= 7; left++) {
    for (let right = 0; left + right <= 7; right++) alternatives.push(`${groups(left)}::${groups(right)}`);
  }
  for (let left = 0; left <= 5; left++) {
    for (let right = 0; left + right <= 5; right++)
      alternatives.push(`${groups(left)}::${right > 0 ? `${groups(right)}:` : ""}${IPV4}`);
  }
  return `(?:${alternatives.join("|")})`;
})();

export const FORMATS: Readonly<Record<string, string>> = {
  "date-time": `${DATE}[Tt]${TIME}`,
  date: DATE,
  time: TIME,
  uuid: "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
  email: EMAIL,
  ipv4: IPV4,
  ipv6: IPV6,
  hostname: HOSTNAME,
  uri: URI,
};

const cache = new Map<string, CharDfa>();

/** The characters a format allows, or undefined for a format that is not enforced. */
export function formatDfa(format: string, budget: Budget): CharDfa | undefined {
  const pattern = FORMATS[format];
  if (pattern === undefined) return undefined;
  let dfa = cache.get(format);
  if (!dfa) {
    dfa = minimize(fullMatchDfa(pattern, budget)) as CharDfa;
    cache.set(format, dfa);
  }
  return dfa;
}
