import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { safeNextPath } from "./request-context.js";

/** What a browser would treat as leaving the origin, were it put in `href` or `location`. */
function leavesOrigin(path: string): boolean {
  const base = new URL("http://hv.invalid/account/page");
  return new URL(path, base).origin !== base.origin || !path.startsWith("/") || /^\/[/\\]/.test(path);
}

describe("safeNextPath", () => {
  it("keeps same-origin paths, with their query and fragment, dot segments resolved", () => {
    assert.equal(safeNextPath("/dev/app?x=1#top"), "/dev/app?x=1#top");
    assert.equal(safeNextPath("/a/../b?c#d"), "/b?c#d");
    assert.equal(safeNextPath("/a/./b/"), "/a/b/");
    assert.equal(safeNextPath(undefined), "/");
    assert.equal(safeNextPath(""), "/");
  });

  it("refuses what names another origin before or after normalisation", () => {
    for (const evil of [
      "//evil.example/x",
      "/\\evil.example",
      "https://evil.example",
      "javascript:alert(1)",
      "evil.example",
      // Dot segments that collapse into a network-path reference (RFC 3986 §4.2, §5.2.4).
      "/.//evil.example",
      "/..//evil.example/x",
      "/./..//evil.example",
      "/a/..//evil.example",
      "/%2e//evil.example",
      "/%2E%2E//evil.example",
      "/.//evil.localhost:18090/phish",
      "/./\\evil.example",
      "/\t/evil.example",
      "/\n/evil.example",
      `/${"a".repeat(2048)}`,
    ]) {
      assert.equal(safeNextPath(evil), "/", JSON.stringify(evil));
    }
  });

  it("never returns a path that leaves the origin, whatever it is given", () => {
    const segment = fc.constantFrom("", ".", "..", "%2e", "%2E%2e", "evil.example", "a", "\\", "@", ":", "?", "#", "%2f", "%5c");
    const crafted = fc.array(segment, { maxLength: 6 }).map((parts) => `/${parts.join("/")}`);
    fc.assert(
      fc.property(fc.oneof({ arbitrary: crafted, weight: 6 }, fc.string({ maxLength: 40 }), fc.webUrl(), fc.webPath()), (input) => {
        const out = safeNextPath(input);
        assert.ok(out === "/" || !leavesOrigin(out), `${JSON.stringify(input)} → ${JSON.stringify(out)}`);
      }),
      { numRuns: 2000 },
    );
  });
});
