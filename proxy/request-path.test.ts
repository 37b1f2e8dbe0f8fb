import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { normalizePath, resolvePath } from "./request-path.js";

describe("normalizePath", () => {
  it("answers every target as the full dot-segment algorithm does, whether it takes the shortcut or not", () => {
    // An alphabet dense in what the shortcut must notice: dots, slashes, escapes, backslashes.
    const char = fc.constantFrom("a", "/", ".", "%", "2", "e", "E", "f", "5", "c", "0", "\\", "?", "v", "d");
    fc.assert(
      fc.property(fc.array(char, { maxLength: 24 }), (chars) => {
        const target = `/${chars.join("")}`;
        assert.deepEqual(normalizePath(target), resolvePath(target), target);
      }),
      { numRuns: 20_000 },
    );
  });

  it("leaves an ordinary path and its query as they are", () => {
    assert.deepEqual(normalizePath("/dev/app/x.js?v=1.2//3"), { ok: true, path: "/dev/app/x.js", query: "?v=1.2//3" });
    assert.deepEqual(normalizePath("/"), { ok: true, path: "/", query: "" });
    assert.deepEqual(normalizePath("/a/b/"), { ok: true, path: "/a/b/", query: "" });
  });

  it("still resolves what could change the target", () => {
    assert.deepEqual(normalizePath("/dev/../live//x/./y/%2e%2E/"), { ok: true, path: "/live/x/", query: "" });
    assert.equal(normalizePath("/a%2fb").ok, false);
    assert.equal(normalizePath("/a\\b").ok, false);
    assert.equal(normalizePath("a/b").ok, false);
  });
});
