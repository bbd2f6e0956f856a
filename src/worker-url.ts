/**
 * A worker script's address, from source and inside the compiled binary alike. In the binary every module's
 * `import.meta.url` is the executable itself and entry points are named from src/ (the build's root, see
 * `npm run build:binary`), so there the address is the entry point's path from src/.
 */
export function workerUrl(pathFromSrc: string): string {
  return import.meta.url.includes("/$bunfs/")
    ? `./${pathFromSrc}`
    : new URL(`./${pathFromSrc}`, import.meta.url).href;
}
