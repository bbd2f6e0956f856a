/** `import path from "x.so" with { type: "file" }`: Bun gives the file's path (in the binary, its embedded copy). */
declare module "*.so" {
  const path: string;
  export default path;
}
