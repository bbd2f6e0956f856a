/**
 * GET /openapi.json (the document, generated once from the routes) and GET /docs, an API reference page
 * rendered from it by Scalar. The page's script is served from node_modules by this server: it works
 * offline, with no CDN.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import type { Hono } from "hono";
import type { AppEnv } from "../context.ts";
import { openApiDocument } from "../openapi.ts";

const PAGE = `<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <title>multilora API</title>
    <meta name="viewport" content="width=device-width, initial-scale=1" />
  </head>
  <body>
    <script id="api-reference" data-url="/openapi.json"></script>
    <script src="/docs/scalar.js"></script>
  </body>
</html>
`;

/** Scalar's standalone bundle, read once on first use (`MULTILORA_DOCS_SCRIPT`: the release binary's copy). */
let script: Uint8Array | undefined;
function scalarScript(): Uint8Array {
  const embedded = process.env.MULTILORA_DOCS_SCRIPT;
  if (!script && embedded) script = readFileSync(embedded);
  if (!script) {
    const require = createRequire(import.meta.url);
    // The package's exports do not list the bundle: find it beside its package.json.
    const pkg = require.resolve("@scalar/api-reference/package.json");
    script = readFileSync(join(dirname(pkg), "dist/browser/standalone.js"));
  }
  return script;
}

export function docsRoutes(app: Hono<AppEnv>): void {
  let document: Promise<unknown> | undefined;
  app.get("/openapi.json", async (c) => {
    document ??= openApiDocument(app);
    return c.json(await document);
  });
  app.get("/docs", (c) => c.html(PAGE));
  app.get(
    "/docs/scalar.js",
    () =>
      new Response(scalarScript(), {
        headers: {
          "content-type": "text/javascript; charset=utf-8",
          "cache-control": "public, max-age=86400",
        },
      }),
  );
}
