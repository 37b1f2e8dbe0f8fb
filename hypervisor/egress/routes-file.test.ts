import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseRoutes } from "./routes-file.js";

const ok = {
  name: "openai",
  upstream: "https://api.openai.com/v1",
  header: "Authorization",
  value: "Bearer {secret}",
  secret: "openai",
  userKeys: true,
  rpm: 60,
};

describe("the routes file", () => {
  it("reads routes with their defaults", () => {
    const [r] = parseRoutes(JSON.stringify([ok]), "routes.json");
    assert.equal(r!.header, "authorization");
    assert.equal(r!.upstream.href, "https://api.openai.com/v1");
    assert.equal(r!.concurrent, 16);
    assert.equal(r!.dailyBytes, undefined);
  });

  it("names the route and the field of each problem", () => {
    const bad = (routes: unknown, pattern: RegExp) => assert.throws(() => parseRoutes(JSON.stringify(routes), "routes.json"), pattern);
    bad({}, /routes\.json: a JSON array/);
    bad([{ ...ok, upstream: "http://api.openai.com" }], /route "openai" \(#1\), field "upstream": must start with https:\/\//);
    bad([ok, { ...ok, name: "two", value: "Bearer" }], /route "two" \(#2\), field "value": must contain \{secret\}/);
    bad([{ ...ok, name: "Bad Name" }], /route "Bad Name" \(#1\), field "name"/);
    bad([{ ...ok, key: "sk-123" }], /route "openai" \(#1\): unknown field\(s\) key/);
    bad([{ ...ok, header: "host" }], /field "header": a header the gateway sets itself/);
    bad([{ ...ok, upstream: "https://user:pw@api.openai.com" }], /no credentials, query or fragment/);
    bad([ok, ok], /route "openai" \(#2\): the name is used twice/);
    assert.throws(() => parseRoutes("[", "routes.json"), /routes\.json: not JSON/);
  });
});
