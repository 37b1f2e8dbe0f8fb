import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { REFUSALS_AUDITED_PER_MINUTE } from "../../hypervisor/audit/refusal-audit.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { OperatorClient } from "../helpers/operator-client.js";
import { parsePrometheusText } from "../helpers/prometheus-text.js";

/** DESIGN §6: refused calls (bad token, invalid input) are audited, rate-limited so a flood cannot fill the log. */
describe("operator API: refused calls", () => {
  let t: TestDaemon;
  let secrets: { path: string; remove(): void };
  let tcp: { host: string; port: number };
  const token = randomBytes(16).toString("hex");
  const wrongToken = randomBytes(16).toString("hex");

  before(async () => {
    secrets = tempDir("hv-token-");
    const tokenFile = join(secrets.path, "operator-token");
    writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    t = await bootDaemon({ env: { HYPERVISOR_OPERATOR_LISTEN: "127.0.0.1:0", HYPERVISOR_OPERATOR_TOKEN_FILE: tokenFile } });
    tcp = { host: "127.0.0.1", port: t.daemon.operatorAddress!.port };
  });
  after(async () => {
    await t.close();
    secrets.remove();
  });

  const refusals = () => t.daemon.services.audit.list({ limit: 100_000 }).filter((e) => e.action === "operator.refused");
  const refusedTotal = async (reason: string) =>
    parsePrometheusText((await t.operator.get<string>("/metrics")).body as string).value("hypervisor_operator_refused_total", { reason });

  it("audits wrong tokens, at most a few rows a minute per source, counts every one, and never records the token", async () => {
    const bad = new OperatorClient({ ...tcp, token: wrongToken });
    const users = t.daemon.services.routing.users().length;
    const before = await refusedTotal("unauthorized");
    for (let i = 0; i < 30; i++) assert.equal((await bad.post("/users", { name: `mallory-${i}` })).status, 401);
    assert.equal((await new OperatorClient(tcp).get("/status")).status, 401, "no token at all");

    const rows = refusals();
    assert.equal(rows.length, REFUSALS_AUDITED_PER_MINUTE, `rows: ${JSON.stringify(rows.slice(0, 2))}`);
    for (const row of rows) {
      assert.equal(row.actor, "anonymous");
      assert.equal(row.outcome, "refused");
      assert.equal(row.source, "127.0.0.1");
      assert.equal(row.target, "POST /users");
      assert.equal(row.details?.reason, "unauthorized");
      assert.equal(row.details?.status, 401);
    }
    assert.equal((await refusedTotal("unauthorized"))! - before!, 31, "the metric counts what the log leaves out");
    assert.equal(t.daemon.services.routing.users().length, users, "nothing was created");

    t.daemon.services.refusals.flush();
    const summary = refusals()[0]!;
    assert.equal(summary.actor, "hypervisor");
    assert.equal(summary.details?.suppressed, 31 - REFUSALS_AUDITED_PER_MINUTE);
    const everything = JSON.stringify(t.daemon.services.audit.list({ limit: 100_000 }));
    assert.ok(!everything.includes(wrongToken) && !everything.includes(token), "no token, right or wrong, in the audit log");
  });

  it("audits invalid input as the operator who sent it, and not what an action already audited", async () => {
    const mark = refusals().length;
    const before = await refusedTotal("invalid_input");
    assert.equal((await t.operator.post("/users", { name: "Not A Name!" })).status, 400);
    assert.equal((await t.operator.send("POST", "/users", "{not json")).status, 400);
    assert.equal((await t.operator.get("/audit?limit=banana")).status, 400);
    assert.equal((await t.operator.send("POST", "/users", "x".repeat(70 * 1024))).status, 413);
    const rows = refusals()
      .slice(0, refusals().length - mark)
      .reverse();
    assert.deepEqual(
      rows.map((r) => [r.actor, r.source, r.target, r.details?.reason]),
      [
        ["operator:unix", "unix-socket", "POST /users", "invalid_input"],
        ["operator:unix", "unix-socket", "POST /users", "invalid_input"],
        ["operator:unix", "unix-socket", "GET /audit", "invalid_input"],
        ["operator:unix", "unix-socket", "POST /users", "payload_too_large"],
      ],
    );
    assert.equal((await refusedTotal("invalid_input"))! - before!, 3);
    assert.ok(!JSON.stringify(rows).includes("Not A Name"), "no request body in the audit log");

    // A call an action took over is audited by that action, once, even when it answers 400.
    assert.equal((await t.operator.post("/generations", { image: "localhost/x:1" })).status, 400, "the process runtime takes commands");
    assert.equal(t.daemon.services.audit.list({ limit: 1 })[0]?.action, "generation.add");
    assert.equal(refusals().length, mark + 4);
  });
});
