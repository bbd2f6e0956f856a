/**
 * File access with errors a user can act on: "does not exist", "is a directory", "permission denied",
 * each naming the path, instead of a bare errno.
 */
import { closeSync, constants, fstatSync, openSync, type Stats, statSync } from "node:fs";
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
    code: storageErrorCode(error) ?? (code === "ENOENT" ? "file_not_found" : "io_error"),
    cause: error,
  });
}

/**
 * The code of a write that failed because of the server's storage, not the request: a full disk or quota
 * (insufficient_storage, 507) or a read-only file system (storage_unwritable, 503).
 */
export function storageErrorCode(error: unknown): "insufficient_storage" | "storage_unwritable" | null {
  const code = (error as NodeJS.ErrnoException)?.code;
  if (code === "ENOSPC" || code === "EDQUOT") return "insufficient_storage";
  if (code === "EROFS") return "storage_unwritable";
  return null;
}

export interface OpenFile {
  fd: number;
  size: number;
  close(): void;
}

/** What a file that is not a regular one is, in words: "a directory", "a FIFO", "a character device"... */
export function fileKind(stat: Stats): string {
  if (stat.isDirectory()) return "a directory";
  if (stat.isFIFO()) return "a FIFO";
  if (stat.isCharacterDevice()) return "a character device";
  if (stat.isBlockDevice()) return "a block device";
  if (stat.isSocket()) return "a socket";
  if (stat.isSymbolicLink()) return "a link";
  return "a regular file";
}

/** The error for a path that is something other than a regular file. */
export function notRegularFile(path: string, stat: Stats): MultiloraError {
  if (stat.isDirectory()) return fileError(path, Object.assign(new Error("a directory"), { code: "EISDIR" }));
  return new MultiloraError(`${path}: is not a regular file (${fileKind(stat)})`, { code: "io_error" });
}

/**
 * Opens a regular file for reading and returns its descriptor and size. Only regular files are opened:
 * the type is checked before the open (a FIFO would block it, a device would never end), the open does
 * not block (O_NONBLOCK), and the descriptor is checked to be the file that was looked at.
 */
export function openForReading(path: string, options: { noFollow?: boolean } = {}): OpenFile {
  let before: Stats;
  try {
    before = statSync(path);
  } catch (e) {
    throw fileError(path, e, "read");
  }
  if (!before.isFile()) throw notRegularFile(path, before);
  let fd: number;
  try {
    const noFollow = options.noFollow ? constants.O_NOFOLLOW : 0;
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | noFollow);
  } catch (e) {
    throw fileError(path, e, "read");
  }
  const stat = fstatSync(fd);
  if (!stat.isFile() || stat.ino !== before.ino || stat.dev !== before.dev) {
    closeSync(fd);
    throw stat.isFile()
      ? new MultiloraError(`${path}: was replaced while it was opened`, { code: "io_error" })
      : notRegularFile(path, stat);
  }
  return { fd, size: stat.size, close: () => closeSync(fd) };
}
