/**
 * Stop strings over streamed text: text is held back while it could still be the start of a stop string,
 * and the output ends just before the first match, even when it spans tokens.
 */
export class StopMatcher {
  private pending = "";

  constructor(private readonly stops: readonly string[]) {}

  push(text: string, final: boolean): { emit: string; matched: boolean } {
    this.pending += text;
    if (this.stops.length === 0) return this.take(this.pending.length, false);
    let first = -1;
    for (const s of this.stops) {
      if (s.length === 0) continue;
      const at = this.pending.indexOf(s);
      if (at >= 0 && (first < 0 || at < first)) first = at;
    }
    if (first >= 0) return this.take(first, true);
    if (final) return this.take(this.pending.length, false);
    // Keep the longest tail that is a prefix of some stop string.
    let keep = 0;
    for (const s of this.stops) {
      for (let n = Math.min(s.length - 1, this.pending.length); n > keep; n--) {
        if (this.pending.endsWith(s.slice(0, n))) {
          keep = n;
          break;
        }
      }
    }
    return this.take(this.pending.length - keep, false);
  }

  private take(n: number, matched: boolean): { emit: string; matched: boolean } {
    const emit = this.pending.slice(0, n);
    this.pending = matched ? "" : this.pending.slice(n);
    return { emit, matched };
  }
}
