/**
 * Admission, in one place: how many requests the server holds (`--max-queue`, counted from when a request's
 * task is built to its last event), who waits for room in a full adapter cache and in what order, for how
 * long (`--queue-timeout`), and draining at shutdown.
 *
 * Waiters are woken by engine events, never by polling: every engine request that ends, and every unpin or
 * release, calls `roomFreed()`. Whose turn it is: the waiters whose adapter is cached by now (they need no
 * room), and the one that has waited longest. A waiter that loses the race waits again with its original
 * arrival time, so it stays first in line. `epoch` counts the frees, so a request that failed for lack of
 * room can tell whether room came free while its failure was on its way (then it retries at once).
 *
 * KV cache room is the engine's own admission (its scheduler starts a queued request when its KV fits, as
 * TensorRT-LLM's capacity scheduler does); the requests held here bound how many can wait for it.
 */
import { MultiloraError } from "../errors.ts";

interface Waiter {
  taskId: bigint;
  since: number;
  wake(woken: boolean): void;
}

/** A request's hold on the server; `release` is idempotent. */
export interface Slot {
  release(): void;
}

export class Admission {
  private held = 0;
  private draining = false;
  private readonly waiters: Waiter[] = [];
  private readonly onIdle: (() => void)[] = [];
  private readonly onFree: (() => void)[] = [];
  /** How many times room came free. */
  epoch = 0;

  constructor(
    /** Requests held at once (waiting or running) before new ones get a 503. */
    readonly maxRequests: number,
    /** Longest wait for room in a full adapter cache. */
    readonly queueTimeoutMs: number,
    /** Whether the engine holds an adapter now (the waiters whose adapter is cached go first). */
    private readonly isCached: (taskId: bigint) => boolean,
  ) {}

  /** Requests held now. */
  get size(): number {
    return this.held;
  }

  /** Takes a slot for one request, or refuses it: 503 while draining or at the limit. */
  enter(): Slot {
    if (this.draining) {
      throw new MultiloraError(
        "the server is shutting down; send the request to another replica or retry later",
        { code: "shutting_down" },
      );
    }
    if (this.held >= this.maxRequests) {
      throw new MultiloraError(
        `the server is at its limit of ${this.maxRequests} requests (--max-queue); retry later`,
        { code: "overloaded" },
      );
    }
    this.held++;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.held--;
        if (this.held === 0) for (const resolve of this.onIdle.splice(0)) resolve();
      },
    };
  }

  /**
   * Waits for room for `taskId` (a request that arrived at `since`): resolves true when woken, false when
   * the queue timeout passed.
   */
  waitForRoom(taskId: bigint, since: number): Promise<boolean> {
    const budget = since + this.queueTimeoutMs - Date.now();
    if (budget <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const waiter: Waiter = {
        taskId,
        since,
        wake: (woken) => {
          clearTimeout(timer);
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          resolve(woken);
        },
      };
      const timer = setTimeout(() => waiter.wake(false), budget);
      this.waiters.push(waiter);
    });
  }

  /** Room may have come free: an engine request ended, or an adapter was unpinned or released. */
  roomFreed(): void {
    this.epoch++;
    for (const resolve of this.onFree.splice(0)) resolve();
    if (this.waiters.length === 0) return;
    const oldest = this.waiters.reduce((a, b) => (b.since < a.since ? b : a));
    for (const w of this.waiters.filter((w) => w === oldest || this.isCached(w.taskId))) w.wake(true);
  }

  /** The next time room comes free. */
  nextRoomFreed(): Promise<void> {
    return new Promise((resolve) => this.onFree.push(resolve));
  }

  /** Stops admitting; resolves when no request is held, or after `timeoutMs`. */
  drain(timeoutMs: number): Promise<void> {
    this.draining = true;
    if (this.held === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.onIdle.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  get isDraining(): boolean {
    return this.draining;
  }
}
