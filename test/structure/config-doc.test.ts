import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";
import { configurationDoc } from "../../hypervisor/config-doc.js";
import { repoRoot } from "../helpers/paths.js";

it("docs/configuration.md is the config table as `npm run docs:config` renders it", () => {
  const committed = readFileSync(join(repoRoot, "docs/configuration.md"), "utf8");
  assert.equal(committed, configurationDoc(), "the page drifted from hypervisor/config.ts: run `npm run docs:config`");
});
