import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { readableLog } from "./log-view.js";

const probe = (at: string) => JSON.stringify({ msg: "request", at, method: "GET", url: "/health", user: null, upgrade: false });

describe("a sandbox's log as the account page shows it", () => {
  it("turns JSON records into time and message, and folds each run of health probes", () => {
    const lines = [
      JSON.stringify({ msg: "listening", port: 8080, version: "1", failHealth: false }),
      probe("2026-12-07T12:00:01.000Z"),
      probe("2026-12-07T12:00:02.000Z"),
      probe("2026-12-07T12:00:03.000Z"),
      JSON.stringify({ msg: "request", at: "2026-12-07T12:00:04.250Z", method: "POST", url: "/counter", user: "alice", upgrade: false }),
      probe("2026-12-07T12:00:05.000Z"),
    ];
    assert.deepEqual(readableLog(lines, 10), [
      "listening port=8080 version=1 failHealth=false",
      "… 3 health checks",
      "12:00:04 POST /counter",
      "… 1 health check",
    ]);
  });

  it("reads pino's records: epoch time, numeric levels named from warn up, errors by their message", () => {
    const at = Date.UTC(2026, 11, 7, 9, 5, 7);
    const lines = [
      JSON.stringify({ level: 30, time: at, pid: 7, hostname: "box", msg: "server started" }),
      JSON.stringify({ level: 50, time: at, pid: 7, hostname: "box", msg: "query failed", err: { type: "Error", message: "disk full", stack: "…" } }),
      JSON.stringify({ level: 30, time: at, req: { method: "GET", url: "/health?deep=1" }, msg: "request completed" }),
      JSON.stringify({ level: 40, time: at, req: { method: "GET", url: "/health" }, msg: "request completed" }),
    ];
    assert.deepEqual(readableLog(lines, 10), [
      "09:05:07 server started",
      "09:05:07 ERROR query failed err: disk full",
      "… 1 health check",
      "09:05:07 WARN request completed",
    ]);
  });

  it("keeps text as text, folds plain access-log probes, and gives the last entries, newest last", () => {
    const lines = ["booting", "GET /health 200 1ms", "HEAD /health 200", "{not json", "ready", "[1,2]"];
    assert.deepEqual(readableLog(lines, 3), ["{not json", "ready", "[1,2]"]);
    assert.deepEqual(readableLog(lines, 10).slice(0, 2), ["booting", "… 2 health checks"]);
    assert.deepEqual(readableLog([], 5), []);
  });
});
