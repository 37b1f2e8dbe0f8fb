import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { it } from "node:test";
import { repoRoot } from "../helpers/paths.js";

/** Every Markdown file a reader of the repository gets: the README, docs/ and deploy/. */
function markdownFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return markdownFiles(path);
    return entry.name.endsWith(".md") ? [path] : [];
  });
}

it("the docs cite only what a reader has: no sections of the design contract, which is not in the repository", () => {
  const files = [join(repoRoot, "README.md"), ...markdownFiles(join(repoRoot, "docs")), ...markdownFiles(join(repoRoot, "deploy"))];
  assert.ok(files.length > 5, "the docs were found");
  const cited = files.flatMap((file) =>
    readFileSync(file, "utf8")
      .split("\n")
      .flatMap((line, i) => (/DESIGN(\.md)?\s*§/.test(line) ? [`${relative(repoRoot, file)}:${i + 1}: ${line.trim().slice(0, 120)}`] : [])),
  );
  assert.deepEqual(cited, [], "link the repository's own docs instead");
});
