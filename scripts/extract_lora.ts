#!/usr/bin/env bun
/**
 * Drop-in for llgtrt's scripts/extract_lora.py, without Python: the same -i / -o flags (plus -t, --base,
 * --skip-unsupported), running `multilora extract`.
 *
 *   bun scripts/extract_lora.ts -i ./my-peft-adapter -o ./loras/
 */
import { main } from "../src/cli.ts";

process.exit(await main(["extract", ...process.argv.slice(2)]));
