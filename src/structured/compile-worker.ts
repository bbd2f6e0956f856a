/**
 * Worker side of the constraint compiler (src/structured/compiler-thread.ts): compiles one constraint per
 * message off the server's event loop, and posts back the program or the error's code and message.
 */
import { MultiloraError } from "../errors.ts";
import { type ConstraintSpec, compileConstraint } from "./constraint.ts";

declare const self: Worker;

export type CompileReply =
  | { id: number; program: Int32Array }
  | { id: number; error: { message: string; code: string } };

self.onmessage = (event: MessageEvent<{ id: number; spec: ConstraintSpec; timeoutMs: number }>) => {
  const { id, spec, timeoutMs } = event.data;
  try {
    const program = compileConstraint(spec, timeoutMs);
    self.postMessage({ id, program } satisfies CompileReply, [program.buffer as ArrayBuffer]);
  } catch (e) {
    const error =
      e instanceof MultiloraError
        ? { message: e.message, code: e.code }
        : {
            message: `the constraint compiler failed: ${e instanceof Error ? e.message : String(e)}`,
            code: "internal_error",
          };
    self.postMessage({ id, error } satisfies CompileReply);
  }
};
