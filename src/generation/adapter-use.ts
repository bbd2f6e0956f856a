/**
 * Which adapters requests use now: a request with an adapter is waiting from its admission until its
 * first events are in (waiting for adapter room, or queued in the engine), then running until its last
 * event. For vLLM's `vllm:lora_requests_info` gauge, which gateways (the Gateway API Inference Extension)
 * read for LoRA affinity: the names, and the Unix time the lists last changed.
 */
export class AdapterUse {
  private readonly waiting = new Map<string, number>();
  private readonly running = new Map<string, number>();
  /** Unix time (seconds) the running or waiting names last changed. */
  changedAt = Date.now() / 1000;

  /** A request for `name` entered: waiting until `running()`, gone at `end()` (idempotent). */
  enter(name: string): { running(): void; end(): void } {
    let state: "waiting" | "running" | "ended" = "waiting";
    this.add(this.waiting, name, 1);
    return {
      running: () => {
        if (state !== "waiting") return;
        state = "running";
        this.add(this.waiting, name, -1);
        this.add(this.running, name, 1);
      },
      end: () => {
        if (state === "ended") return;
        this.add(state === "waiting" ? this.waiting : this.running, name, -1);
        state = "ended";
      },
    };
  }

  /** The adapters with running requests, sorted. */
  runningNames(): string[] {
    return [...this.running.keys()].sort();
  }

  /** The adapters with waiting requests, sorted. */
  waitingNames(): string[] {
    return [...this.waiting.keys()].sort();
  }

  private add(counts: Map<string, number>, name: string, delta: number): void {
    const had = counts.has(name);
    const n = (counts.get(name) ?? 0) + delta;
    if (n > 0) counts.set(name, n);
    else counts.delete(name);
    if (had !== n > 0) this.changedAt = Date.now() / 1000; // a name appeared or went
  }
}
