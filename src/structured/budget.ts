import { MultiloraError } from "../errors.ts";

/**
 * How long a compilation may take and how large its automata may grow. A schema past either is refused
 * (400 `constraint_too_complex`), never left to stall the server: every loop of the compiler that can grow
 * with the schema calls `check`.
 */
export class Budget {
  readonly #deadline: number;
  readonly #maxStates: number;
  #states = 0;
  #calls = 0;

  constructor(timeoutMs: number, maxStates = 200_000) {
    this.#deadline = performance.now() + timeoutMs;
    this.#maxStates = maxStates;
  }

  /** Counts `newStates` automaton states made and throws once past the limits. */
  check(newStates = 0): void {
    this.#states += newStates;
    if (this.#states > this.#maxStates) {
      throw new MultiloraError(
        `the constraint needs more than ${this.#maxStates} automaton states; simplify it`,
        {
          code: "constraint_too_complex",
        },
      );
    }
    if ((++this.#calls & 255) === 0 && performance.now() > this.#deadline) {
      throw new MultiloraError("the constraint took too long to compile; simplify it", {
        code: "constraint_too_complex",
      });
    }
  }
}
