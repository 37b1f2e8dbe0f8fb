import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { openDatabase } from "../db/database.js";
import { AuditLog } from "./audit-log.js";
import { RefusalAudit, type Refusal } from "./refusal-audit.js";

const refusal = (source: string): Refusal => ({
  actor: "anonymous",
  action: "operator.refused",
  source,
  outcome: "refused",
  details: { reason: "unauthorized" },
});

describe("RefusalAudit", () => {
  it("records a few refusals per source and minute, then one row with how many more there were", () => {
    let now = 0;
    const audit = new AuditLog(openDatabase(":memory:"), () => now);
    const refusals = new RefusalAudit(audit, 3, () => now);
    for (let i = 0; i < 50; i++) refusals.record(refusal("10.0.0.1"));
    for (let i = 0; i < 2; i++) refusals.record(refusal("10.0.0.2"));
    assert.equal(audit.list({ limit: 100 }).length, 5, "three from the flooding source, two from the other");

    now = 60_000;
    refusals.record(refusal("10.0.0.1"));
    const rows = audit.list({ limit: 100 }).reverse();
    assert.equal(rows.length, 7);
    assert.deepEqual(
      { actor: rows[5]!.actor, source: rows[5]!.source, outcome: rows[5]!.outcome, suppressed: rows[5]!.details?.suppressed },
      { actor: "hypervisor", source: "10.0.0.1", outcome: "refused", suppressed: 47 },
      "the summary of the minute that ended",
    );
    assert.equal(rows[6]!.details?.reason, "unauthorized", "a new minute records again");

    for (let i = 0; i < 5; i++) refusals.record(refusal("10.0.0.1"));
    refusals.flush();
    assert.equal(audit.list({ limit: 1 })[0]!.details?.suppressed, 3, "flush writes what is pending");
    refusals.flush();
    assert.equal(audit.list({ limit: 100 }).length, 10, "and only once");
  });

  it("writes the summary when the minute ends, without another refusal", async () => {
    let now = 0;
    const audit = new AuditLog(openDatabase(":memory:"));
    const refusals = new RefusalAudit(audit, 1, () => now);
    refusals.record(refusal("a"));
    now = 59_990; // the timer is due in 10 ms
    refusals.record(refusal("a"));
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(audit.list({ limit: 1 })[0]!.details?.suppressed, 1);
  });
});
