/**
 * bench/http.ts's HTTP client, in a process of its own so that its work (sending, parsing responses) is
 * not counted as the server's. Reads one line per batch, the number of concurrent requests, and answers
 * with one line: the median milliseconds per request.
 *
 *   bun bench/http-client.ts <base-url>
 */
import { createInterface } from "node:readline";
import { median } from "./shapes.ts";

const [url] = process.argv.slice(2);
const body = JSON.stringify({
  model: "llama",
  prompt: [1, 2, 3, 4, 5, 6, 7, 8],
  max_tokens: 16,
  temperature: 0,
});

async function one(): Promise<number> {
  const t = performance.now();
  const r = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
  const parsed = (await r.json()) as { usage?: { completion_tokens: number } };
  if (parsed.usage?.completion_tokens !== 16)
    throw new Error(`expected 16 tokens, got ${JSON.stringify(parsed).slice(0, 200)}`);
  return performance.now() - t;
}

for await (const line of createInterface({ input: process.stdin })) {
  const concurrency = Number(line);
  const times = await Promise.all(Array.from({ length: concurrency }, one));
  process.stdout.write(`${median(times)}\n`);
}
