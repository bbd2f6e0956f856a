/**
 * Adapter weights kept in host memory by task id, to send again after the engine evicted them: least
 * recently used first out, under a byte cap. Weights whose copy was dropped are read again from disk and
 * checked by sha256 to be the content the task id names (a 409 lora_changed when the file changed since).
 */
import type { LoraRef } from "../engine/engine.ts";
import { MultiloraError } from "../errors.ts";
import type { SafetensorsFile } from "../formats/safetensors-reader.ts";
import { loraRefOf, parseTrtllmAdapter } from "./trtllm-adapter.ts";

/** One content version's weights: its task id and the hash its file must still have. */
export interface WeightsOrigin {
  /** The adapter's name, for messages. */
  name: string;
  taskId: bigint;
  sha256: string;
}

export class HostCopies {
  /** By task id, least recently used first, with their file sizes. */
  private readonly copies = new Map<bigint, { lora: LoraRef; bytes: number }>();
  private bytes = 0;
  /** How many times dropped weights were read again from disk. */
  rereads = 0;

  constructor(
    /** Most bytes kept; the newest copy stays even when it alone is more. */
    readonly maxBytes: number,
  ) {}

  /** Keeps a copy, dropping the least recently used others beyond `maxBytes`. */
  keep(taskId: bigint, lora: LoraRef, bytes: number): void {
    const old = this.copies.get(taskId);
    if (old) this.bytes -= old.bytes;
    this.copies.delete(taskId);
    this.copies.set(taskId, { lora, bytes });
    this.bytes += bytes;
    for (const [id, copy] of this.copies) {
      if (this.bytes <= this.maxBytes || id === taskId) break;
      this.copies.delete(id);
      this.bytes -= copy.bytes;
    }
  }

  /** Drops the copy of `taskId` (an unloaded adapter: its next use reads the file again). */
  drop(taskId: bigint): void {
    const copy = this.copies.get(taskId);
    if (!copy) return;
    this.copies.delete(taskId);
    this.bytes -= copy.bytes;
  }

  /** The weights of `origin`: the host copy, else read again by `read()` and checked to be the same content. */
  async weights(
    origin: WeightsOrigin,
    read: () => Promise<{ file: SafetensorsFile; sha256: string }>,
  ): Promise<LoraRef> {
    const copy = this.copies.get(origin.taskId);
    if (copy) {
      this.copies.delete(origin.taskId); // most recently used last
      this.copies.set(origin.taskId, copy);
      return copy.lora;
    }
    this.rereads++;
    let again: { file: SafetensorsFile; sha256: string };
    try {
      again = await read();
    } catch (e) {
      throw changed(origin, ` (it cannot be read again: ${(e as Error).message})`);
    }
    if (again.sha256 !== origin.sha256) throw changed(origin);
    const lora = loraRefOf(parseTrtllmAdapter(again.file), origin.taskId);
    this.keep(origin.taskId, lora, again.file.bytes.length);
    return lora;
  }
}

function changed(origin: WeightsOrigin, detail = ""): MultiloraError {
  return new MultiloraError(
    `adapter "${origin.name}" changed on disk while this request was starting${detail}; send the request again to use the new version`,
    { code: "lora_changed", param: "lora_model" },
  );
}
