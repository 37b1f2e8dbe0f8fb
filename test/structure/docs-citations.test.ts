import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { it } from "node:test";
import { repoRoot } from "../helpers/paths.js";

/** Every file below `dir` whose name `keep` accepts. */
function filesUnder(dir: string, keep: (name: string) => boolean): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return filesUnder(path, keep);
    return keep(entry.name) ? [path] : [];
  });
}

// deploy/ whole: an operator reads the unit, the module and the scripts' comments too.
it("the docs and deploy files cite only what a reader has: no sections of the design contract, which is not in the repository", () => {
  const files = [
    join(repoRoot, "README.md"),
    ...filesUnder(join(repoRoot, "docs"), (name) => name.endsWith(".md")),
    ...filesUnder(join(repoRoot, "deploy"), () => true),
  ];
  assert.ok(files.length > 5, "the docs were found");
  const cited = files.flatMap((file) =>
    readFileSync(file, "utf8")
      .split("\n")
      .flatMap((line, i) => (/DESIGN(\.md)?\s*§/.test(line) ? [`${relative(repoRoot, file)}:${i + 1}: ${line.trim().slice(0, 120)}`] : [])),
  );
  assert.deepEqual(cited, [], "link the repository's own docs instead");
});
