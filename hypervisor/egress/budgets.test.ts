import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Budgets } from "./budgets.js";

describe("Budgets", () => {
  it("counts per user and target: rpm in fixed minutes, concurrency until release, the day's requests and bytes", () => {
    let now = Date.UTC(2026, 0, 1, 23, 58, 30);
    const budgets = new Budgets(() => now);
    const ok = (r: ReturnType<Budgets["acquire"]>) => {
      assert.ok(r.ok, r.ok ? "" : r.message);
      return r.lease;
    };
    ok(budgets.acquire("u", "route:a", { rpm: 2 })).release();
    ok(budgets.acquire("u", "route:a", { rpm: 2 })).release();
    const refused = budgets.acquire("u", "route:a", { rpm: 2 });
    assert.ok(!refused.ok && refused.limit === "rpm" && refused.retryAfterSeconds === 30);
    assert.ok(budgets.acquire("u", "route:b", { rpm: 2 }).ok, "another target");
    assert.ok(budgets.acquire("v", "route:a", { rpm: 2 }).ok, "another user");
    now += 30_000;
    assert.ok(budgets.acquire("u", "route:a", { rpm: 2 }).ok, "the next minute");

    const held = ok(budgets.acquire("u", "proxy", { concurrent: 1 }));
    const busy = budgets.acquire("u", "proxy", { concurrent: 1 });
    assert.ok(!busy.ok && busy.limit === "concurrent");
    held.release();
    held.release();
    ok(budgets.acquire("u", "proxy", { concurrent: 1 })).release();

    const big = ok(budgets.acquire("u", "route:c", { dailyBytes: 100 }));
    big.addBytes(150);
    big.release();
    const spent = budgets.acquire("u", "route:c", { dailyBytes: 100 });
    assert.ok(!spent.ok && spent.limit === "daily_bytes" && spent.retryAfterSeconds === 60, "until midnight UTC");
    assert.equal(budgets.usage("u").find((x) => x.target === "route:c")?.dayBytes, 150);
    now += 60_000;
    assert.ok(budgets.acquire("u", "route:c", { dailyBytes: 100 }).ok, "a new day");
    assert.deepEqual(
      budgets.usage("v").map((x) => [x.target, x.dayRequests]),
      [["route:a", 0]],
      "the day rolled for every entry",
    );
  });

  it("binds calls in flight to the day's bytes: the lease says when they are spent, by this call or another of the user's", () => {
    let now = Date.UTC(2026, 0, 1, 23, 59, 0);
    const budgets = new Budgets(() => now);
    const limits = { dailyBytes: 1000 };
    const lease = (user: string) => {
      const r = budgets.acquire(user, "proxy", limits);
      assert.ok(r.ok, r.ok ? "" : r.message);
      return r.lease;
    };
    const first = lease("u");
    const second = lease("u");
    const other = lease("v");
    assert.equal(first.addBytes(600), undefined);
    assert.equal(first.addBytes(0), undefined, "asking spends nothing");
    const spent = second.addBytes(400);
    assert.ok(spent && spent.limit === "daily_bytes" && spent.retryAfterSeconds === 60, "the call that reaches the budget is told, with when to retry");
    assert.equal(first.addBytes(0)?.limit, "daily_bytes", "and so is the user's other call in flight");
    assert.equal(other.addBytes(999), undefined, "another user's day is their own");
    assert.deepEqual([first.bytes, second.bytes], [600, 400]);
    const refused = budgets.acquire("u", "proxy", limits);
    assert.ok(!refused.ok && refused.limit === "daily_bytes");
    now += 60_000;
    assert.equal(first.addBytes(10), undefined, "bytes of a call running past midnight are the new day's");
    assert.equal(budgets.usage("u")[0]?.dayBytes, 10);
  });
});
