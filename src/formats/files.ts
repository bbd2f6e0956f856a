/**
 * File access with errors a user can act on: "does not exist", "is a directory", "permission denied",
 * each naming the path, instead of a bare errno.
 */
import { closeSync, fstatSync, openSync } from "node:fs";
import { MultiloraError } from "../errors.ts";

/** Turns a Node.js system error into a MultiloraError that names the path and what went wrong. */
export function fileError(path: string, error: unknown, doing = "open"): MultiloraError {
  const code = (error as NodeJS.ErrnoException)?.code;
  const what =
    code === "ENOENT"
      ? "does not exist"
      : code === "EISDIR"
        ? "is a directory, not a file"
        : code === "ENOTDIR"
          ? "is not inside a directory (a part of the path is a file)"
          : code === "EACCES" || code === "EPERM"
            ? `permission denied (cannot ${doing} it)`
            : code === "ENOSPC"
              ? "no space left on the device"
              : code === "EROFS"
                ? "is on a read-only file system"
                : `cannot ${doing} it (${(error as Error)?.message ?? String(error)})`;
  return new MultiloraError(`${path}: ${what}`, {
    code: code === "ENOENT" ? "file_not_found" : "io_error",
    cause: error,
  });
}

export interface OpenFile {
  fd: number;
  size: number;
  close(): void;
}

/** Opens a regular file for reading and returns its descriptor and size. */
export function openForReading(path: string): OpenFile {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw fileError(path, e, "read");
  }
  const stat = fstatSync(fd);
  if (!stat.isFile()) {
    closeSync(fd);
    throw fileError(path, Object.assign(new Error("not a file"), { code: "EISDIR" }));
  }
  return { fd, size: stat.size, close: () => closeSync(fd) };
}
