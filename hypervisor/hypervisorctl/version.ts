import { readFileSync } from "node:fs";

/** The package's version, read from its package.json (three levels above the compiled file). */
export const VERSION = (JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string }).version;
