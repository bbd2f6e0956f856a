/**
 * Constraint compilation off the event loop: one worker thread compiles one constraint at a time
 * (src/structured/compile-worker.ts), the others wait their turn. Its compiler stops itself at the time
 * limit; should it not answer a while after that, the worker is ended and a new one started, and that
 * request gets the same 400 as a compilation past the limit.
 */
import { type ErrorCode, MultiloraError } from "../errors.ts";
import { workerUrl } from "../worker-url.ts";
import type { CompileReply } from "./compile-worker.ts";
import type { ConstraintSpec } from "./constraint.ts";

interface Job {
  id: number;
  spec: ConstraintSpec;
  timeoutMs: number;
  resolve: (program: Int32Array) => void;
  reject: (e: Error) => void;
}

export class CompilerThread {
  #worker: Worker | null = null;
  #nextId = 1;
  readonly #queue: Job[] = [];
  #running: { job: Job; timer: ReturnType<typeof setTimeout> } | null = null;

  compile(spec: ConstraintSpec, timeoutMs: number): Promise<Int32Array> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ id: this.#nextId++, spec, timeoutMs, resolve, reject });
      this.#pump();
    });
  }

  close(): void {
    this.#worker?.terminate();
    this.#worker = null;
  }

  #pump(): void {
    if (this.#running) return;
    const job = this.#queue.shift();
    if (!job) return;
    const worker = this.#ensureWorker();
    // Generous: the compiler checks its own deadline; this only catches a compiler that never answers.
    const timer = setTimeout(() => this.#stuck(), job.timeoutMs * 2 + 1000);
    this.#running = { job, timer };
    worker.postMessage({ id: job.id, spec: job.spec, timeoutMs: job.timeoutMs });
  }

  #ensureWorker(): Worker {
    if (this.#worker) return this.#worker;
    const worker = new Worker(workerUrl("structured/compile-worker.ts"));
    worker.onmessage = (event: MessageEvent<CompileReply>) => {
      const reply = event.data;
      const running = this.#running;
      if (!running || running.job.id !== reply.id) return;
      clearTimeout(running.timer);
      this.#running = null;
      if ("program" in reply) running.job.resolve(reply.program);
      else
        running.job.reject(new MultiloraError(reply.error.message, { code: reply.error.code as ErrorCode }));
      this.#pump();
    };
    worker.unref();
    this.#worker = worker;
    return worker;
  }

  #stuck(): void {
    const running = this.#running;
    this.close();
    this.#running = null;
    running?.job.reject(
      new MultiloraError("the constraint took too long to compile; simplify it", {
        code: "constraint_too_complex",
      }),
    );
    this.#pump();
  }
}
