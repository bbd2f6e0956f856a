/**
 * sha256 of a file's bytes, computed while they are read. Big files are read into a SharedArrayBuffer and
 * hashed chunk by chunk on a worker thread as each chunk lands, so hashing overlaps both the read and
 * whatever the caller does next (hashing a 170 MB adapter takes longer than reading and converting it).
 */

import { workerUrl } from "../worker-url.ts";

/** Below this size a worker costs more than it saves. */
export const WORKER_THRESHOLD = 4 << 20;

export interface Sha256Stream {
  /** Bytes [0, end) of the buffer are final and may be hashed. */
  advance(end: number): void;
  /** The hex digest of bytes [0, end) once the last `advance` covered the whole buffer. */
  digest(): Promise<string>;
}

/** Starts hashing `bytes` as they are filled in; on a worker when they live in a big SharedArrayBuffer. */
export function sha256Stream(bytes: Uint8Array): Sha256Stream {
  if (bytes.buffer instanceof SharedArrayBuffer && bytes.length >= WORKER_THRESHOLD)
    return workerStream(bytes);
  let end = 0;
  return {
    advance: (e) => {
      end = e;
    },
    digest: () => Promise.resolve(sha256Hex(bytes.subarray(0, end))),
  };
}

export function sha256Hex(bytes: Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
}

function workerStream(bytes: Uint8Array): Sha256Stream {
  const worker = new Worker(workerUrl("formats/sha256-worker.ts"));
  const result = new Promise<string>((resolve, reject) => {
    worker.onmessage = (event: MessageEvent<string>) => resolve(event.data);
    worker.onerror = (event) => reject(new Error(`sha256 worker failed: ${event.message}`));
  }).finally(() => worker.terminate());
  result.catch(() => {}); // observed by digest(); never an unhandled rejection
  worker.postMessage({ buffer: bytes.buffer, offset: bytes.byteOffset });
  return {
    advance: (end) => worker.postMessage({ end }),
    digest: () => {
      worker.postMessage({ done: true });
      return result;
    },
  };
}
