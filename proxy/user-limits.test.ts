import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { renderError } from "../hypervisor/errors.js";
import { UserLimits } from "./user-limits.js";

describe("UserLimits", () => {
  it("gives each user up to the bound of each limit, then nothing until one is released", () => {
    const limits = new UserLimits({ requests: 2, websockets: 1 });
    const a1 = limits.acquire("alice", "requests");
    const a2 = limits.acquire("alice", "requests");
    assert.ok(a1 && a2);
    assert.equal(limits.acquire("alice", "requests"), undefined);
    assert.ok(limits.acquire("bob", "requests"), "another user has bounds of his own");
    assert.ok(limits.acquire("alice", "websockets"), "and each limit is counted apart");
    a1();
    assert.ok(limits.acquire("alice", "requests"));
  });

  it("counts a release once however often it is called", () => {
    const limits = new UserLimits({ requests: 1, websockets: 1 });
    const release = limits.acquire("alice", "requests")!;
    release();
    release();
    assert.ok(limits.acquire("alice", "requests"));
    assert.equal(limits.acquire("alice", "requests"), undefined, "the double release gave back one place, not two");
  });

  it("refuses with 429, Retry-After and the bound in the message (RFC 6585 §4)", () => {
    const { status, headers, body } = renderError(new UserLimits({ requests: 3, websockets: 5 }).refusal("websockets"), "r-1");
    assert.equal(status, 429);
    assert.equal(headers["retry-after"], "1");
    const { error } = JSON.parse(body) as { error: { code: string; message: string; details: { limit: string } } };
    assert.equal(error.code, "rate_limited");
    assert.match(error.message, /5 WebSockets open/);
    assert.equal(error.details.limit, "websockets");
  });
});
