/**
 * vLLM's metric names beside ours on /metrics, the ones the Gateway API Inference Extension's endpoint
 * picker scrapes to route (its model-server protocol): queue depth, running requests, KV cache use (0..1)
 * and `vllm:lora_requests_info`, whose labels name the adapters with running and waiting requests
 * (comma-joined) and how many adapters fit, its value the Unix time those last changed (the picker takes
 * the series with the newest value).
 */
import { Gauge, type Registry } from "prom-client";
import type { GenerationCore } from "../generation/core.ts";
import { engineCounter } from "./observe.ts";

export function registerVllmMetrics(registry: Registry, core: GenerationCore): void {
  const engine = core.engine;
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(read());
      },
    });
  gauge(
    "vllm:num_requests_running",
    "Requests the engine is running (vLLM's name)",
    () => engine.stats().running,
  );
  gauge(
    "vllm:num_requests_waiting",
    "Requests queued in the engine or waiting for adapter room (vLLM's name)",
    () => engine.stats().queued + core.admission.waitingForRoom,
  );
  gauge("vllm:kv_cache_usage_perc", "KV cache use, 0..1 (vLLM's name)", () => {
    const s = engine.stats();
    return s.kvBytesCapacity > 0 ? s.kvBytesUsed / s.kvBytesCapacity : 0;
  });
  engineCounter(
    registry,
    "vllm:prefix_cache_queries_total",
    "Prompt tokens looked up in the prefix cache (vLLM's name)",
    () => engine.stats().prefixQueryTokens,
  );
  engineCounter(
    registry,
    "vllm:prefix_cache_hits_total",
    "Prompt tokens found in the prefix cache (vLLM's name)",
    () => engine.stats().prefixHitTokens,
  );
  new Gauge({
    name: "vllm:lora_requests_info",
    help: "Adapters with running and waiting requests, and how many fit; the value is the Unix time they last changed (vLLM's name)",
    labelNames: ["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
    registers: [registry],
    collect() {
      const use = core.adapterUse;
      this.reset();
      this.set(
        {
          running_lora_adapters: use.runningNames().join(","),
          waiting_lora_adapters: use.waitingNames().join(","),
          max_lora: String(engine.stats().maxLoras),
        },
        use.changedAt,
      );
    },
  });
}
