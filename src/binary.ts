/**
 * The entry point of the single-file release (`npm run build:binary` -> dist/multilora): the CLI with the
 * native CPU engine library embedded in the executable (the /docs page's script is bundled as text by
 * src/server/routes/docs.ts). Bun extracts an embedded file to a temporary path when it is opened, so the
 * library is dlopen'ed like any other.
 */
import nativeLibrary from "../build/libmultilora.so" with { type: "file" };

process.env.MULTILORA_LIB ??= nativeLibrary;

const { main } = await import("./cli.ts");
process.exit(await main(process.argv.slice(2)));
