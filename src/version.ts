import packageJson from "../package.json" with { type: "json" };

/** multilora's version, from package.json. */
export const VERSION: string = packageJson.version;
