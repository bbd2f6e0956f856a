/**
 * The cache dir (converted PEFT adapters, the demo model) checked once at start-up: created if missing and
 * written to, so a read-only, full or foreign folder is one clear line then, not a 500 at request time.
 */
import { mkdirSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { MultiloraError } from "../errors.ts";

export function checkCacheDir(dir: string): void {
  const probe = join(dir, `.write-check-${process.pid}`);
  try {
    mkdirSync(dir, { recursive: true });
    writeFileSync(probe, "ok");
    unlinkSync(probe);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException)?.code;
    const why =
      code === "EROFS"
        ? "it is on a read-only file system"
        : code === "EACCES" || code === "EPERM"
          ? "permission denied"
          : code === "ENOSPC" || code === "EDQUOT"
            ? "no space left on the device"
            : code === "ENOTDIR" || code === "EEXIST"
              ? "a part of the path is a file"
              : ((e as Error)?.message ?? String(e));
    throw new MultiloraError(
      `cache dir ${dir} is not usable (${why}): it holds converted PEFT adapters and the demo model; give --cache-dir a writable folder`,
      { code: "invalid_config", cause: e },
    );
  }
}
