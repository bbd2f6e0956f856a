/**
 * GET /openapi.json (the document, generated once from the routes) and GET /docs, an API reference page
 * rendered from it in the browser by our own small script (src/server/docs-page/docs.js): no third-party
 * UI, no CDN, no network beyond this server. The script is bundled as text, so the release binary has it.
 */
import type { Hono } from "hono";
import type { AppEnv } from "../context.ts";
// @ts-expect-error a text import gives the file's contents; the browser script has no type declarations
import script from "../docs-page/docs.js" with { type: "text" };
import { openApiDocument } from "../openapi.ts";

const PAGE = `<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <title>multilora API</title>
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <style>
      :root { color-scheme: light dark; --line: #8884; --muted: #888; --code: #8881; }
      * { box-sizing: border-box; }
      body { margin: 0; font: 15px/1.5 system-ui, sans-serif; }
      #app { display: flex; align-items: flex-start; }
      nav { position: sticky; top: 0; width: 17rem; max-height: 100vh; overflow-y: auto; flex: none;
        padding: 1rem; border-right: 1px solid var(--line); font-size: 13px; }
      nav .tag { display: block; font-weight: 600; margin-top: 0.75rem; }
      nav ul { list-style: none; margin: 0.25rem 0; padding: 0; }
      nav li a { display: block; padding: 0.1rem 0; }
      a { color: inherit; }
      .content { flex: 1; min-width: 0; max-width: 62rem; padding: 1rem 2rem 4rem; }
      h1 .version { font-size: 0.9rem; font-weight: normal; color: var(--muted); }
      h2 { border-bottom: 1px solid var(--line); padding-bottom: 0.25rem; margin-top: 2.5rem; }
      .operation { border: 1px solid var(--line); border-radius: 6px; padding: 0 1rem 0.75rem; margin: 1.25rem 0; }
      .operation h3 { font-size: 1.05rem; }
      .summary { font-weight: 600; }
      .method { display: inline-block; min-width: 3.6em; text-align: center; border-radius: 4px; padding: 0 0.3em;
        font: 600 12px/1.6 ui-monospace, monospace; color: #fff; background: #666; }
      .method.get { background: #1a7f37; } .method.post { background: #0969da; }
      .method.delete { background: #cf222e; } .method.put, .method.patch { background: #9a6700; }
      code, pre { font-family: ui-monospace, monospace; font-size: 13px; background: var(--code); border-radius: 3px; }
      code { padding: 0 0.2em; } pre { padding: 0.75rem; overflow-x: auto; }
      .muted { color: var(--muted); font-size: 13px; }
      .required { margin-left: 0.4em; font-size: 11px; color: #cf222e; text-transform: uppercase; }
      table.fields { border-collapse: collapse; width: 100%; font-size: 13px; margin: 0.5rem 0; }
      .fields th, .fields td { border-top: 1px solid var(--line); padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
      .fields td.field { white-space: nowrap; }
      .prose.inline p { margin: 0; }
      details.response { border-top: 1px solid var(--line); padding: 0.3rem 0; }
      details.response summary { cursor: pointer; }
      .status { font: 600 13px ui-monospace, monospace; }
      .status.ok { color: #1a7f37; } .status.error { color: #bc4c00; } .status.server-error { color: #cf222e; }
      .failed { color: #cf222e; }
      @media (max-width: 800px) { #app { display: block; } nav { position: static; width: auto; max-height: none; } }
    </style>
  </head>
  <body>
    <div id="app"><p class="muted" style="padding: 1rem">Loading the API document from /openapi.json…</p></div>
    <script src="/docs/docs.js"></script>
    <noscript>This page needs JavaScript; the document itself is at <a href="/openapi.json">/openapi.json</a>.</noscript>
  </body>
</html>
`;

export function docsRoutes(app: Hono<AppEnv>): void {
  let document: Promise<unknown> | undefined;
  app.get("/openapi.json", async (c) => {
    document ??= openApiDocument(app);
    return c.json(await document);
  });
  app.get("/docs", (c) => c.html(PAGE));
  app.get(
    "/docs/docs.js",
    () =>
      new Response(script as string, {
        headers: {
          "content-type": "text/javascript; charset=utf-8",
          "cache-control": "no-cache",
        },
      }),
  );
}
