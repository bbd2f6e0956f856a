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
 *
 * A request is held from when its body has arrived and its task is built (a stalled upload holds nothing),
 * and one key holds at most `maxPerKey` (`--max-concurrent-per-key`), so one tenant cannot take every
 * place. Draining (SIGTERM): nothing new is admitted, the requests not yet running (waiting for adapter
 * room, or queued in the engine) are stopped at once (503 with Retry-After), the running ones may finish
 * until the drain timeout and are then stopped (an error event for streams, a 503 otherwise).
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
  /**
   * How to end the request when the server drains: called at once while it is not running yet, at the
   * drain timeout once it is (`running`). The last one given counts.
   */
  onDrain(stop: () => void): void;
  /** Its first events are in: it may run on until the drain timeout. */
  running(): void;
}

interface Hold {
  running: boolean;
  stop: (() => void) | null;
}

/** After the drain timeout, how long stopped requests get to end before the drain gives up on them. */
const STOP_GRACE_MS = 2000;

export class Admission {
  private held = 0;
  private draining = false;
  /** The drain timeout passed: every request is being stopped. */
  private stopping = false;
  private readonly holds = new Set<Hold>();
  private readonly perKey = new Map<string, number>();
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
    /** Requests one API key holds at once (0: no limit). */
    readonly maxPerKey = 0,
  ) {}

  /** Requests held now. */
  get size(): number {
    return this.held;
  }

  /** Requests waiting for room in a full adapter cache now. */
  get waitingForRoom(): number {
    return this.waiters.length;
  }

  /** Takes a slot for one request of `key` (null: no key), or refuses it: 503 while draining or at the limit, 429 at the key's. */
  enter(key: string | null = null): Slot {
    if (this.draining) throw shuttingDown();
    if (this.held >= this.maxRequests) {
      throw new MultiloraError(
        `the server is at its limit of ${this.maxRequests} requests (--max-queue); retry later`,
        { code: "overloaded" },
      );
    }
    const keyHeld = key === null ? 0 : (this.perKey.get(key) ?? 0);
    if (key !== null && this.maxPerKey > 0 && keyHeld >= this.maxPerKey) {
      throw new MultiloraError(
        `this API key has ${keyHeld} requests running or waiting, its limit (--max-concurrent-per-key); retry when one ends`,
        { code: "too_many_requests" },
      );
    }
    this.held++;
    if (key !== null) this.perKey.set(key, keyHeld + 1);
    const hold: Hold = { running: false, stop: null };
    this.holds.add(hold);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.held--;
        this.holds.delete(hold);
        if (key !== null) {
          const n = (this.perKey.get(key) ?? 1) - 1;
          if (n === 0) this.perKey.delete(key);
          else this.perKey.set(key, n);
        }
        if (this.held === 0) for (const resolve of this.onIdle.splice(0)) resolve();
      },
      onDrain: (stop) => {
        hold.stop = stop;
        if (!released && (this.stopping || (this.draining && !hold.running))) stop();
      },
      running: () => {
        hold.running = true;
      },
    };
  }

  /**
   * Waits for room for `taskId` (a request that arrived at `since`): resolves true when woken, false when
   * the queue timeout passed.
   */
  waitForRoom(taskId: bigint, since: number): Promise<boolean> {
    const budget = since + this.queueTimeoutMs - Date.now();
    if (budget <= 0 || this.draining) return Promise.resolve(false);
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

  /**
   * Stops admitting and stops the requests not running yet; the running ones are stopped after `timeoutMs`.
   * Resolves when no request is held (or a short grace after the timeout).
   */
  drain(timeoutMs: number): Promise<void> {
    if (!this.draining) {
      this.draining = true;
      for (const w of [...this.waiters]) w.wake(false); // waiting for adapter room: answered now
      for (const h of [...this.holds]) if (!h.running) h.stop?.();
    }
    if (this.held === 0) return Promise.resolve();
    return new Promise((resolve) => {
      let grace: ReturnType<typeof setTimeout> | undefined;
      const timer = setTimeout(() => {
        this.stopping = true;
        for (const h of [...this.holds]) h.stop?.();
        grace = setTimeout(resolve, STOP_GRACE_MS);
      }, timeoutMs);
      this.onIdle.push(() => {
        clearTimeout(timer);
        clearTimeout(grace);
        resolve();
      });
    });
  }

  get isDraining(): boolean {
    return this.draining;
  }
}

export function shuttingDown(): MultiloraError {
  return new MultiloraError(
    "the server is shutting down; send the request to another replica or retry later",
    { code: "shutting_down" },
  );
}
