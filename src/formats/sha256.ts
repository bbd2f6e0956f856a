/**
 * sha256 of a byte buffer. Bytes in a SharedArrayBuffer are hashed on a worker thread, so a caller
 * converting the same bytes overlaps the two (hashing a 170 MB adapter takes about as long as converting it).
 */

/** Below this size a worker costs more than it saves. */
const WORKER_THRESHOLD = 4 << 20;

export function sha256Hex(bytes: Uint8Array): Promise<string> {
  if (!(bytes.buffer instanceof SharedArrayBuffer) || bytes.length < WORKER_THRESHOLD) {
    return Promise.resolve(new Bun.CryptoHasher("sha256").update(bytes).digest("hex"));
  }
  const worker = new Worker(new URL("./sha256-worker.ts", import.meta.url).href);
  return new Promise<string>((resolve, reject) => {
    worker.onmessage = (event: MessageEvent<string>) => resolve(event.data);
    worker.onerror = (event) => reject(new Error(`sha256 worker failed: ${event.message}`));
    worker.postMessage({ buffer: bytes.buffer, offset: bytes.byteOffset, length: bytes.length });
  }).finally(() => worker.terminate());
}
