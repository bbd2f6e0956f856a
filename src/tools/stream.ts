/**
 * The streaming parser: generated text in, OpenAI-shaped deltas out. A call's first delta carries its
 * `index`, `id` and `name`; the next its arguments (`delta.tool_calls[{index, id, type: "function",
 * function: {name, arguments}}]` on the wire). Content streams as it comes, except text that may be the
 * start of a call, which is held until it is known not to be one.
 *
 * A call goes out once it is complete and valid, so nothing is ever taken back: the content deltas
 * joined, and the calls, are exactly what `parseToolCalls` gives for the whole text, however it was cut.
 */
import type { Family } from "./families.ts";
import { newToolCallId } from "./ids.ts";
import { type ToolLike, toolNames } from "./parse.ts";
import { ToolCallScanner } from "./scanner.ts";

export interface ToolCallDeltaPart {
  /** The call's position among this output's calls: 0, 1, ... */
  index: number;
  /** On a call's first delta. */
  id?: string;
  /** On a call's first delta. */
  name?: string;
  /** A fragment of the arguments' JSON text; the fragments of a call joined are its `arguments`. */
  argumentsDelta?: string;
}

export type ToolCallDelta = { content: string } | { toolCall: ToolCallDeltaPart };

export interface ToolCallStream {
  /** The deltas that `textDelta` (the next generated text) releases; often none. */
  push(textDelta: string): ToolCallDelta[];
  /** At the end of the output: what was held back (an unfinished call comes back as content). */
  end(): ToolCallDelta[];
  /** How many calls have gone out (for `finish_reason: "tool_calls"`). */
  readonly callCount: number;
}

export function createToolCallStream(family: Family, tools: Iterable<ToolLike>): ToolCallStream {
  const scanner = new ToolCallScanner(family, toolNames(tools));
  let nextIndex = 0;
  let ended = false;

  function deltas(events: ReturnType<ToolCallScanner["push"]>): ToolCallDelta[] {
    const out: ToolCallDelta[] = [];
    for (const event of events) {
      if ("content" in event) {
        out.push({ content: event.content });
        continue;
      }
      for (const call of event.calls) {
        const index = nextIndex++;
        out.push({ toolCall: { index, id: newToolCallId(), name: call.name } });
        out.push({ toolCall: { index, argumentsDelta: call.arguments } });
      }
    }
    return out;
  }

  return {
    push(textDelta: string): ToolCallDelta[] {
      return ended ? [] : deltas(scanner.push(textDelta));
    },
    end(): ToolCallDelta[] {
      if (ended) return [];
      ended = true;
      return deltas(scanner.end());
    },
    get callCount(): number {
      return nextIndex;
    },
  };
}
