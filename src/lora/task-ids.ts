/**
 * Engine task ids by content: each adapter content (its sha256) gets its own id, and an id is never given
 * to other content. The engine does not overwrite a cached task (TensorRT-LLM's rule), so a new id for new
 * bytes is what keeps a replaced adapter from being served stale (ARCHITECTURE.md section 4).
 */
export class TaskIds {
  private readonly bySha256 = new Map<string, bigint>();
  private next = 1n;

  /** The id of the content with this sha256: the one it had before, else a new one. */
  idOf(sha256: string): bigint {
    let id = this.bySha256.get(sha256);
    if (id === undefined) {
      id = this.next++;
      this.bySha256.set(sha256, id);
    }
    return id;
  }
}
