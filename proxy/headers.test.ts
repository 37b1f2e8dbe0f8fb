import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { upstreamRequestHeaders } from "./headers.js";

const TOKEN = "A".repeat(43);
const identity = { user: "alice", role: "live", generation: 1 };
const ctx = { clientAddress: "192.0.2.1", proto: "https", host: "hv.example.org" };

describe("upstreamRequestHeaders", () => {
  it("strips every spelling of the session cookie that authenticates, and our other cookies", () => {
    for (const cookie of [`hv_session =${TOKEN}; theme=dark`, `theme=dark;hv_session\t=${TOKEN}`, `hv_sandbox=x; theme=dark; __Host-hv_session=${TOKEN}`]) {
      const out = upstreamRequestHeaders({ cookie }, identity, ctx);
      assert.equal(out.cookie, "theme=dark", cookie);
    }
    assert.equal(upstreamRequestHeaders({ cookie: `hv_session=${TOKEN}` }, identity, ctx).cookie, undefined, "no empty Cookie field");
  });
});
