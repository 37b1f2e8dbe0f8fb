import { fileURLToPath } from "node:url";

/** Compiled helpers live in dist/test/helpers; the repository root is three levels up. */
export const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
