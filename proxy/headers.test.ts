import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { downstreamRawHeaders, ORIGIN_WIDE, upstreamRequestHeaders } from "./headers.js";

const TOKEN = "A".repeat(43);
const identity = { user: "alice", role: "live", generation: 1 };
const ctx = { clientAddress: "192.0.2.1", proto: "https", host: "hv.example.org" };
const raw = (...pairs: string[]) => pairs.map((p) => Buffer.from(p, "latin1"));

describe("upstreamRequestHeaders", () => {
  it("strips every spelling of the session cookie that authenticates, and our other cookies", () => {
    for (const cookie of [`hv_session =${TOKEN}; theme=dark`, `theme=dark;hv_session\t=${TOKEN}`, `hv_sandbox=x; theme=dark; __Host-hv_session=${TOKEN}`]) {
      const out = upstreamRequestHeaders({ cookie }, identity, ctx);
      assert.equal(out.cookie, "theme=dark", cookie);
    }
    assert.equal(upstreamRequestHeaders({ cookie: `hv_session=${TOKEN}` }, identity, ctx).cookie, undefined, "no empty Cookie field");
  });
});

describe("downstreamRawHeaders", () => {
  it("drops a sandbox's Set-Cookie for hv_session or hv_sandbox and keeps its own cookies", () => {
    const out = downstreamRawHeaders(
      raw(
        "Content-Type",
        "text/html",
        "Set-Cookie",
        "theme=dark; Path=/",
        "Set-Cookie",
        `hv_session=${TOKEN}; Path=/dev`,
        "set-cookie",
        "hv_session=; Max-Age=0",
        "SET-COOKIE",
        "hv_sandbox=x",
        "Set-Cookie",
        "__Host-hv_session=x; Secure; Path=/",
        "Set-Cookie",
        " hv_session =x",
        "Set-Cookie",
        "=hv_session=x",
        "Set-Cookie",
        "lang=en",
      ),
    );
    assert.deepEqual(out, ["content-type", "text/html", "set-cookie", "theme=dark; Path=/", "set-cookie", "lang=en"]);
  });

  it("still removes hop-by-hop fields and those the Connection field lists", () => {
    const out = downstreamRawHeaders(raw("Connection", "keep-alive, X-Secret", "X-Secret", "1", "Keep-Alive", "timeout=5", "X-Kept", "2"));
    assert.deepEqual(out, ["x-kept", "2"]);
  });

  it("drops the origin-wide fields when asked, in any letter case (a sandbox on the public origin)", () => {
    const fields = raw("Service-Worker-Allowed", "/", "CLEAR-SITE-DATA", '"storage"', "X-Kept", "2");
    assert.deepEqual(downstreamRawHeaders(fields, ORIGIN_WIDE), ["x-kept", "2"]);
    assert.deepEqual(downstreamRawHeaders(fields), ["service-worker-allowed", "/", "clear-site-data", '"storage"', "x-kept", "2"]);
  });
});

describe("upstreamRequestHeaders, identity", () => {
  it("drops client-sent identity and forwarding headers in every dash or underscore spelling", () => {
    // Node lowercases names; CGI/WSGI stacks map both `-` and `_` to `_` (HTTP_X_HYPERVISOR_USER).
    const spoofed = [
      "x-hypervisor-user",
      "x_hypervisor_user",
      "x-hypervisor_role",
      "x_hypervisor-generation",
      "x_hypervisor_anything",
      "x-forwarded-for",
      "x_forwarded_for",
      "x_forwarded-proto",
      "x-forwarded_host",
      "forwarded",
    ];
    const out = upstreamRequestHeaders(Object.fromEntries(spoofed.map((name) => [name, "bob"])), identity, ctx);
    assert.deepEqual(Object.keys(out).sort(), [
      "x-forwarded-for",
      "x-forwarded-host",
      "x-forwarded-proto",
      "x-hypervisor-generation",
      "x-hypervisor-role",
      "x-hypervisor-user",
    ]);
    assert.equal(out["x-hypervisor-user"], "alice");
    assert.equal(out["x-forwarded-for"], ctx.clientAddress);
  });

  it("keeps look-alikes that are not ours", () => {
    const kept = { "x-hypervisorish": "1", "x-forwardedness": "1", x_other: "1", "xx-hypervisor-user": "1", "forwarded-by": "1" };
    const out = upstreamRequestHeaders(kept, identity, ctx);
    for (const name of Object.keys(kept)) assert.equal(out[name], "1", name);
  });
});
