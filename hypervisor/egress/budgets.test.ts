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
});
