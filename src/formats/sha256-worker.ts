/**
 * Worker side of sha256Stream: receives a SharedArrayBuffer, then "bytes up to `end` are ready" messages,
 * hashes each new range as it arrives, and posts the hex digest back on `done`.
 */
declare const self: Worker;

type Message = { buffer: SharedArrayBuffer; offset: number } | { end: number } | { done: true };

const hasher = new Bun.CryptoHasher("sha256");
let view: Uint8Array | undefined;
let hashed = 0;

self.onmessage = (event: MessageEvent<Message>) => {
  const m = event.data;
  if ("buffer" in m) {
    view = new Uint8Array(m.buffer, m.offset);
  } else if ("end" in m && view) {
    hasher.update(view.subarray(hashed, m.end));
    hashed = m.end;
  } else if ("done" in m) {
    self.postMessage(hasher.digest("hex"));
  }
};
