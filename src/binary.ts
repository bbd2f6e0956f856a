/**
 * The entry point of the single-file release (`npm run build:binary` -> dist/multilora): the CLI with the
 * native CPU engine library and the API page's script embedded in the executable. Bun extracts an embedded
 * file to a temporary path when it is opened, so the library is dlopen'ed like any other.
 */
import nativeLibrary from "../build/libmultilora.so" with { type: "file" };
// @ts-expect-error a file import gives a path string; the bundle itself has no type declarations
import docsScript from "../node_modules/@scalar/api-reference/dist/browser/standalone.js" with {
  type: "file",
};

process.env.MULTILORA_LIB ??= nativeLibrary;
process.env.MULTILORA_DOCS_SCRIPT ??= docsScript;

const { main } = await import("./cli.ts");
process.exit(await main(process.argv.slice(2)));
