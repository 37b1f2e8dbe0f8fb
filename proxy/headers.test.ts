import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { upstreamRequestHeaders } from "./headers.js";

const identity = { user: "alice", role: "live", generation: 3 };
const ctx = { clientAddress: "10.0.0.1", proto: "https", host: "hv.example.org" };

describe("upstream request headers", () => {
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
    assert.equal(out["x-forwarded-for"], "10.0.0.1");
  });

  it("keeps look-alikes that are not ours", () => {
    const kept = { "x-hypervisorish": "1", "x-forwardedness": "1", x_other: "1", "xx-hypervisor-user": "1", "forwarded-by": "1" };
    const out = upstreamRequestHeaders(kept, identity, ctx);
    for (const name of Object.keys(kept)) assert.equal(out[name], "1", name);
  });
});
