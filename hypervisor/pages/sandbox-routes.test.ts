import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { idleNote } from "./sandbox-routes.js";

const at = (hhmm: string) => Date.parse(`2026-12-07T${hhmm}:00Z`);

describe("what idleness will do to a sandbox, in words", () => {
  const now = at("12:00");
  it("names the last use, then the freeze and the stop with how far off they are", () => {
    const plan = { lastActivity: at("11:58"), openSockets: 0, freezeAt: at("12:03"), stopAt: at("12:28") };
    assert.equal(
      idleNote("running", plan, now),
      "last used 11:58 UTC; if unused until then, frozen at 12:03 UTC (in 3 min), then stopped at 12:28 UTC (in 28 min)",
    );
  });

  it("says only the stop for a frozen one, and nothing ahead when both tiers are off", () => {
    assert.equal(
      idleNote("frozen", { lastActivity: at("09:00"), openSockets: 0, freezeAt: null, stopAt: at("14:00") }, now),
      "last used 09:00 UTC; if unused until then, stopped at 14:00 UTC (in 2 h)",
    );
    assert.equal(
      idleNote("running", { lastActivity: at("11:00"), openSockets: 0, freezeAt: null, stopAt: null }, now),
      "last used 11:00 UTC; never frozen or stopped for being idle",
    );
  });

  it("says an open connection keeps it, a start under way, and a stopped one starts when opened", () => {
    assert.match(idleNote("running", { lastActivity: at("11:00"), openSockets: 2, freezeAt: at("11:05"), stopAt: at("11:30") }, now), /while a connection/);
    assert.equal(idleNote("starting", undefined, now), "starting now");
    assert.equal(idleNote("stopped", undefined, now), "not running: opening it starts it");
    assert.equal(idleNote("not started", undefined, now), "not running: opening it starts it");
    assert.equal(
      idleNote("running", { lastActivity: now, openSockets: 0, freezeAt: now + 20_000, stopAt: null }, now),
      "last used 12:00 UTC; if unused until then, frozen at 12:00 UTC (in under a minute)",
    );
  });
});
