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
    const users = t.daemon.services.users.users().length;
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
    assert.equal(t.daemon.services.users.users().length, users, "nothing was created");

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

  it("refuses invalid input to the users and logs routes with 400, before anything changes, and audits it", async () => {
    const user = `refusals-${randomBytes(3).toString("hex")}`;
    assert.equal((await t.operator.post("/users", { name: user })).status, 201);
    const before = await refusedTotal("invalid_input");
    const cases: Array<[string, string]> = [
      ["GET", "/sandboxes/Not!A!Name/live/logs"],
      ["GET", `/sandboxes/${user}/prod/logs`],
      ["GET", `/sandboxes/${user}/live/logs?tail=-1`],
      ["GET", `/sandboxes/${user}/live/logs?tail=lots`],
      ["GET", `/sandboxes/${user}/live/logs?tail=10001`],
      ["GET", `/sandboxes/${user}/live/logs?follow=maybe`],
      ["POST", "/users/Not!A!Name/disable"],
      ["POST", "/users/Not!A!Name/sessions/revoke"],
      ["DELETE", `/users/${user}?purge=yes`],
    ];
    for (const [method, path] of cases) {
      const r = await t.operator.send(method, path);
      assert.equal(r.status, 400, `${method} ${path}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, "validation_failed", `${method} ${path}`);
      assert.match(r.body.error.requestId, /^[0-9a-f-]{36}$/);
    }
    // Counted every one; the audit log takes a few a minute per source (the test above used them).
    assert.equal((await refusedTotal("invalid_input"))! - before!, cases.length, "each refusal is counted as invalid input");
    assert.ok(t.daemon.services.users.hasUser(user), "the user is still there");
    assert.equal(t.daemon.services.users.userRecords().find((u) => u.name === user)?.disabledAt, null);

    // Well-formed but about nothing: 404 with the way to find what exists, as an action's own audit entry.
    for (const [method, path] of [
      ["POST", "/users/nobody-here/disable"],
      ["DELETE", "/users/nobody-here"],
      ["POST", "/users/nobody-here/sessions/revoke"],
      ["GET", "/sandboxes/nobody-here/live/logs"],
    ] as const) {
      const r = await t.operator.send(method, path);
      assert.equal(r.status, 404, `${method} ${path}`);
      assert.match(r.body.error.message, /no user nobody-here \(hypervisorctl users list\)/);
    }
    const never = await t.operator.get(`/sandboxes/${user}/live/logs?follow=true`);
    assert.equal(never.status, 404, "a never-started sandbox has no log to follow");
    assert.match(never.body.error.message, /has not been started/);
  });
});
