/** Worker side of sha256Hex: hashes a view of a SharedArrayBuffer and posts the hex digest back. */
declare const self: Worker;

self.onmessage = (event: MessageEvent<{ buffer: SharedArrayBuffer; offset: number; length: number }>) => {
  const { buffer, offset, length } = event.data;
  self.postMessage(
    new Bun.CryptoHasher("sha256").update(new Uint8Array(buffer, offset, length)).digest("hex"),
  );
};
