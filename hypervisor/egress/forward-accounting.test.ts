import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { AuditLog } from "../audit/audit-log.js";
import { openDatabase } from "../db/database.js";
import { createLogger } from "../logger.js";
import { Metrics } from "../metrics/metrics.js";
import { buildEgressCredentials } from "./egress-service.js";

// The forward proxy's budget and audit as the daemon wires them (the gateway's side of the same
// contract is in gateway.test.ts): one budget per user whatever the host, counted and audited
// without a body or a query, refusals with when to retry.
describe("the forward proxy's budget and audit", () => {
  const dir = mkdtempSync(join(tmpdir(), "hv-forward-"));
  const db = openDatabase(join(dir, "hypervisor.db"));
  after(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const metrics = new Metrics({ defaultMetrics: false });
  const credentials = buildEgressCredentials(
    {
      egressRoutes: { routesFile: undefined, secretsDir: undefined, secretsKeyFile: undefined, credentialsDir: undefined },
      egressProxyBudget: { rpm: 2, dailyBytes: 1024 ** 3 },
    },
    { db, audit: new AuditLog(db), registry: metrics.registry, log: createLogger("silent") },
  );
  const alice = { user: "alice", slot: "a" as const, generation: 3 };
  const bob = { user: "bob", slot: "b" as const, generation: 4 };

  it("admits a user's calls up to the minute's budget across hosts, then refuses with Retry-After; another user is unaffected", async () => {
    const { forwardAccounting: accounting } = credentials;
    const first = accounting.begin(alice, "CONNECT", "api.example.org");
    const second = accounting.begin(alice, "GET", "pkg.example.net");
    assert.ok(first.ok && second.ok);
    first.call.end({ status: 200, bytesIn: 300, bytesOut: 4000 });
    second.call.end({ status: 200, bytesIn: 100, bytesOut: 50 });
    const third = accounting.begin(alice, "CONNECT", "api.example.org");
    assert.equal(third.ok, false);
    assert.ok(!third.ok && third.retryAfterSeconds >= 1 && third.retryAfterSeconds <= 60, "until the next minute");
    assert.match(!third.ok ? third.message : "", /more than 2 requests a minute to proxy/);
    assert.ok(accounting.begin(bob, "CONNECT", "api.example.org").ok, "bob's budget is his own");

    const usage = credentials.budgets.usage("alice");
    assert.deepEqual(
      usage.map((u) => [u.target, u.minuteRequests, u.dayBytes, u.concurrent]),
      [["proxy", 2, 4450, 0]],
    );
    const rows = credentials.audit.log({ user: "alice", tail: 10 });
    assert.deepEqual(
      rows.map((r) => [r.decision, r.target, r.method, r.status, r.bytesIn, r.bytesOut]).sort(),
      [
        ["allowed", "host:api.example.org", "CONNECT", 200, 300, 4000],
        ["allowed", "host:pkg.example.net", "GET", 200, 100, 50],
        ["refused", "host:api.example.org", "CONNECT", 429, 0, 0],
      ].sort(),
    );
    const text = await metrics.registry.metrics();
    assert.match(text, /hypervisor_egress_requests_total\{route="proxy",decision="refused",status="4xx"\} 1/);
  });

  it("records a destination the gateway refused, spending no budget", () => {
    credentials.forwardAccounting.refused(bob, "CONNECT", "169.254.77.77", 403, "link-local addresses are never reached");
    const row = credentials.audit.log({ user: "bob", tail: 10 }).find((r) => r.decision === "refused");
    assert.equal(row?.target, "host:169.254.77.77");
    assert.equal(credentials.budgets.usage("bob")[0]?.minuteRequests, 1, "only bob's one admitted call counts");
  });
});
