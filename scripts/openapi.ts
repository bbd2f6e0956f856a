#!/usr/bin/env bun
/**
 * Writes openapi/openapi.json from the routes' valibot schemas (`npm run openapi`). A test fails when the
 * committed file drifts from what the schemas generate.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createApp } from "../src/server/app.ts";
import type { ServerContext } from "../src/server/context.ts";
import { openApiDocument } from "../src/server/openapi.ts";

export const OPENAPI_PATH = join(import.meta.dir, "../openapi/openapi.json");

/** The document as the routes describe it now (the routes need no running engine to be described). */
export function currentDocument() {
  return openApiDocument(createApp({} as ServerContext));
}

if (import.meta.main) {
  writeFileSync(OPENAPI_PATH, `${JSON.stringify(await currentDocument(), null, 2)}\n`);
  console.log(`wrote ${OPENAPI_PATH}`);
}
