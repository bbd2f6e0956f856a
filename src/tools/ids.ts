/** Tool-call ids as OpenAI writes them: `call_` and 24 random letters and digits. */

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const ID_LENGTH = 24;
/** The largest multiple of the alphabet's size that fits a byte: bytes at or above it are redrawn. */
const UNBIASED_LIMIT = 256 - (256 % ALPHABET.length);

export function newToolCallId(): string {
  let id = "call_";
  while (id.length < 5 + ID_LENGTH) {
    for (const byte of crypto.getRandomValues(new Uint8Array(ID_LENGTH))) {
      if (byte < UNBIASED_LIMIT && id.length < 5 + ID_LENGTH) id += ALPHABET[byte % ALPHABET.length];
    }
  }
  return id;
}
