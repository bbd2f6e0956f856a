/**
 * Wire formats: parsing a chat request and encoding its response (with logprobs), JSON against
 * MessagePack, measured in the same run.
 *
 *   bun bench/wire.ts
 *
 * Last line: {"bench":"wire","json_us":J,"msgpack_us":M,"ratio":J/M}
 */
import { decodeMsgpack, encodeMsgpack } from "../src/server/wire.ts";
import { median } from "./shapes.ts";

const request = {
  model: "llama",
  lora_model: "support-bot",
  messages: Array.from({ length: 8 }, (_, i) => ({
    role: i % 2 ? "assistant" : "user",
    content: "How do I reset my password? ".repeat(8),
  })),
  max_tokens: 256,
  temperature: 0.7,
  logprobs: true,
  top_logprobs: 5,
};
const response = {
  id: "chatcmpl-0123456789abcdef",
  object: "chat.completion",
  created: 1795978624,
  model: "llama",
  choices: [
    {
      index: 0,
      message: { role: "assistant", content: "You can reset it from the account page. ".repeat(10) },
      logprobs: {
        content: Array.from({ length: 100 }, (_, i) => ({
          token: ` tok${i}`,
          logprob: -0.123 * (i % 7),
          bytes: [32, 116, 111, 107],
          top_logprobs: Array.from({ length: 5 }, (_, k) => ({
            token: ` alt${k}`,
            logprob: -1.5 * (k + 1),
            bytes: [32, 97],
          })),
        })),
      },
      finish_reason: "stop",
    },
  ],
  usage: { prompt_tokens: 812, completion_tokens: 100, total_tokens: 912 },
};
const jsonBody = new TextEncoder().encode(JSON.stringify(request));
const msgpackBody = encodeMsgpack(request);

function time(run: () => void): number {
  const runs: number[] = [];
  for (let round = 0; round < 15; round++) {
    const t = performance.now();
    for (let i = 0; i < 500; i++) run();
    runs.push(((performance.now() - t) * 1000) / 500);
  }
  return median(runs);
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();
time(() => JSON.parse(decoder.decode(jsonBody)));
const json = time(() => {
  JSON.parse(decoder.decode(jsonBody));
  encoder.encode(JSON.stringify(response));
});
const msgpack = time(() => {
  decodeMsgpack(msgpackBody);
  encodeMsgpack(response);
});
console.log("| format | request bytes | response bytes | parse + encode, µs |");
console.log("|---|---|---|---|");
console.log(`| JSON | ${jsonBody.length} | ${JSON.stringify(response).length} | ${json.toFixed(1)} |`);
console.log(
  `| MessagePack | ${msgpackBody.length} | ${encodeMsgpack(response).length} | ${msgpack.toFixed(1)} |`,
);
console.log(
  JSON.stringify({
    bench: "wire",
    json_us: Number(json.toFixed(1)),
    msgpack_us: Number(msgpack.toFixed(1)),
    ratio: Number((json / msgpack).toFixed(3)),
  }),
);
