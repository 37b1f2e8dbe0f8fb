import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { WebSocket } from "ws";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { OperatorClient } from "../helpers/operator-client.js";
import { parsePrometheusText, type Exposition } from "../helpers/prometheus-text.js";
import { testUser } from "../helpers/run-id.js";

const ORIGIN = "http://localhost:8080";
const TOKEN = "metrics-test-token-0123456789abcdef";
const sandbox = referenceSandboxCommand();

/** Every metric the hypervisor itself exports, with its type. */
const FAMILIES = {
  hypervisor_proxy_requests_total: "counter",
  hypervisor_proxy_request_duration_seconds: "histogram",
  hypervisor_sandboxes: "gauge",
  hypervisor_sandboxes_max: "gauge",
  hypervisor_sandbox_start_duration_seconds: "histogram",
  hypervisor_deploy_duration_seconds: "histogram",
  hypervisor_swap_duration_seconds: "histogram",
  hypervisor_rollback_duration_seconds: "histogram",
  hypervisor_websockets_open: "gauge",
  hypervisor_auth_failures_total: "counter",
} as const;

describe("GET /metrics (operator listener)", () => {
  let t: TestDaemon;
  let tcp: OperatorClient;
  const secrets = tempDir("hv-metrics-secret-");
  const users = [testUser("met-a"), testUser("met-b")];
  const [ua, ub] = users as [string, string];
  const phone = new SoftwareAuthenticator(ORIGIN);
  let browser: PublicClient;

  const scrape = async (): Promise<Exposition> => {
    const res = await t.operator.get<string>("/metrics");
    assert.equal(res.status, 200);
    return parsePrometheusText(String(res.body));
  };

  before(async () => {
    const tokenFile = join(secrets.path, "operator-token");
    writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    t = await bootDaemon({
      env: {
        HYPERVISOR_PUBLIC_ORIGIN: ORIGIN,
        HYPERVISOR_OPERATOR_LISTEN: "127.0.0.1:0",
        HYPERVISOR_OPERATOR_TOKEN_FILE: tokenFile,
        HYPERVISOR_KNOWN_GOOD_AFTER_MS: "600000",
      },
    });
    tcp = new OperatorClient({ host: "127.0.0.1", port: t.daemon.operatorAddress!.port, token: TOKEN });
    browser = new PublicClient(t.publicUrl, ORIGIN);
    const registered = await browser.register(ua, phone);
    assert.equal(registered.status, 201, registered.text);
    assert.equal((await t.operator.post("/users", { name: ub })).status, 201);
  });
  after(async () => {
    for (const user of users) for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t.close();
    secrets.remove();
  });

  it("serves strict Prometheus text with HELP and TYPE for every family, process metrics included", async () => {
    const res = await t.operator.get<string>("/metrics");
    assert.equal(res.status, 200);
    assert.match(String(res.headers["content-type"]), /^text\/plain; version=0\.0\.4; charset=utf-8$/);
    const text = String(res.body);
    const exposition = parsePrometheusText(text);
    for (const [name, type] of Object.entries(FAMILIES)) {
      const family = exposition.families.get(name);
      assert.ok(family, `${name} is exported`);
      assert.equal(family.type, type, `${name} is a ${type}`);
      assert.ok(family.help && family.help.length > 10, `${name} has a HELP text`);
    }
    assert.ok(exposition.families.get("process_cpu_user_seconds_total")?.samples.length, "process default metrics are on the daemon's registry");
    assert.ok(exposition.families.get("nodejs_heap_size_used_bytes")?.samples.length);
    assert.equal(exposition.value("hypervisor_sandboxes_max"), 200);
    // Every line is one of the four kinds the format allows (the parser enforces the details).
    for (const line of text.split("\n")) assert.match(line, /^(|# (HELP|TYPE) \S+ .*|[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? \S+)$/, line);
  });

  it("refuses what is not Prometheus text (the parser is strict)", () => {
    const ok = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n";
    assert.equal(parsePrometheusText(ok).value("a_total"), 1);
    for (const bad of [
      "a_total 1\n", // no TYPE before it
      "# TYPE a_total counter\na_total 1\n", // no HELP
      "# HELP a_total A.\n# TYPE a_total counter\na_total one\n",
      '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1} 1\n',
      '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1"} 1\na_total{x="1"} 2\n',
      "# HELP a_total A.\n# TYPE a_total counter\na_total 1", // no final newline
      '# HELP h A.\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    ]) {
      assert.throws(() => parsePrometheusText(bad), Error, JSON.stringify(bad));
    }
  });

  it("answers on the TCP operator listener only with the bearer token", async () => {
    const without = await new OperatorClient({ host: "127.0.0.1", port: t.daemon.operatorAddress!.port }).get("/metrics");
    assert.equal(without.status, 401);
    const wrong = await new OperatorClient({ host: "127.0.0.1", port: t.daemon.operatorAddress!.port, token: "x".repeat(TOKEN.length) }).get("/metrics");
    assert.equal(wrong.status, 401);
    const res = await tcp.get<string>("/metrics");
    assert.equal(res.status, 200);
    assert.ok(parsePrometheusText(String(res.body)).families.has("hypervisor_proxy_requests_total"));
  });

  it("counts proxied requests by role and status with their latency, and the sandboxes they started", async () => {
    const before = await scrape();
    for (let i = 0; i < 3; i++) assert.equal((await browser.get("/whoami")).status, 200);
    assert.equal((await browser.get("/no-such-page")).status, 404);
    for (let i = 0; i < 2; i++) assert.equal((await browser.get("/dev/whoami")).status, 200);
    assert.equal((await browser.get("/_hv/healthz")).status, 200, "the hypervisor's own routes are not proxied traffic");
    const anonymous = new PublicClient(t.publicUrl, ORIGIN);
    assert.equal((await anonymous.get("/whoami")).status, 401);
    const after = await scrape();

    const delta = (name: string, labels: Record<string, string>) => (after.value(name, labels) ?? 0) - (before.value(name, labels) ?? 0);
    assert.equal(delta("hypervisor_proxy_requests_total", { role: "live", status: "200" }), 3);
    assert.equal(delta("hypervisor_proxy_requests_total", { role: "live", status: "404" }), 1);
    assert.equal(delta("hypervisor_proxy_requests_total", { role: "dev", status: "200" }), 2);
    assert.equal(after.sum("hypervisor_proxy_requests_total") - before.sum("hypervisor_proxy_requests_total"), 6, "nothing else was counted");
    assert.equal(delta("hypervisor_proxy_request_duration_seconds_count", { role: "live" }), 4);
    assert.equal(delta("hypervisor_proxy_request_duration_seconds_count", { role: "dev" }), 2);
    assert.ok(delta("hypervisor_proxy_request_duration_seconds_sum", { role: "live" }) > 0);
    assert.ok(delta("hypervisor_proxy_request_duration_seconds_bucket", { role: "live", le: "10" }) === 4, "every request fell into a bucket at or below 10 s");
    // The first requests started ua's live and dev sandboxes on demand.
    assert.ok(delta("hypervisor_sandbox_start_duration_seconds_count", { outcome: "ok" }) >= 2);
    assert.ok(delta("hypervisor_sandbox_start_duration_seconds_sum", { outcome: "ok" }) > 0);
    assert.equal(after.value("hypervisor_sandboxes", { state: "running" }), t.daemon.services.manager.runningCount());
    assert.equal(
      after.sum("hypervisor_sandboxes"),
      2 * t.daemon.services.users.users().length,
      "running, starting and stopped add up to every user's two slots",
    );
  });

  it("observes each user's deploy, swap and rollback step, by outcome and rollback path", async () => {
    const g1 = t.daemon.services.generations.list()[0]!.id;
    const g2 = (
      await t.operator.post("/generations", {
        command: [...sandbox.command.filter((a) => !a.startsWith("--version=")), "--version=metrics-2"],
        version: "metrics-2",
      })
    ).body.generation.id as number;
    // ua's live runs and ub's does not: after the swap, ua's dev (g1) is warm and ub's is cold.
    assert.equal((await t.operator.post(`/sandboxes/${ua}/live/start`)).status, 200);
    assert.equal((await t.operator.post(`/sandboxes/${ub}/live/stop`)).status, 200);
    const before = await scrape();
    const count = (e: Exposition, name: string, labels: Record<string, string>) => e.value(`hypervisor_${name}_duration_seconds_count`, labels) ?? 0;

    assert.equal((await t.operator.post("/rollback", { users: [ua] })).status, 409, "nothing is known-good yet");
    assert.equal((await t.operator.post("/deploy", { generation: g2, users })).status, 200);
    assert.equal((await t.operator.post("/swap", { users })).status, 200);
    assert.equal((await t.operator.post(`/generations/${g1}/known-good`)).status, 200);
    const rollback = await t.operator.post("/rollback", { users });
    assert.equal(rollback.status, 200, JSON.stringify(rollback.body));
    assert.deepEqual(
      rollback.body.results.map((r: { path: string }) => r.path),
      ["warm", "cold"],
    );

    const after = await scrape();
    assert.equal(count(after, "rollback", { outcome: "error", path: "none" }) - count(before, "rollback", { outcome: "error", path: "none" }), 1);
    assert.equal(count(after, "deploy", { outcome: "ok" }) - count(before, "deploy", { outcome: "ok" }), 2);
    assert.equal(count(after, "swap", { outcome: "ok" }) - count(before, "swap", { outcome: "ok" }), 2);
    assert.equal(count(after, "swap", { outcome: "error" }), count(before, "swap", { outcome: "error" }));
    assert.equal(count(after, "rollback", { outcome: "ok", path: "warm" }) - count(before, "rollback", { outcome: "ok", path: "warm" }), 1);
    assert.equal(count(after, "rollback", { outcome: "ok", path: "cold" }) - count(before, "rollback", { outcome: "ok", path: "cold" }), 1);
    assert.ok(
      (after.value("hypervisor_swap_duration_seconds_sum", { outcome: "ok" }) ?? 0) >
        (before.value("hypervisor_swap_duration_seconds_sum", { outcome: "ok" }) ?? 0),
    );
  });

  it("shows an open WebSocket through the proxy while it is open, and not after", async () => {
    const open = async () => (await scrape()).value("hypervisor_websockets_open");
    const before = await open();
    assert.equal(before, 0);
    const ws = new WebSocket(`${t.publicUrl.replace("http", "ws")}/ws/echo`, { headers: { origin: ORIGIN, cookie: `hv_session=${browser.cookie}` } });
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    const echoed = new Promise((resolve) => ws.once("message", resolve));
    ws.send("ping through the proxy");
    assert.equal(String(await echoed), "ping through the proxy");
    assert.equal(await open(), 1);
    const closed = new Promise((resolve) => ws.once("close", resolve));
    ws.close(1000);
    await closed;
    const deadline = Date.now() + 5000;
    let now = await open();
    while (now !== 0 && Date.now() < deadline) {
      await sleep(20);
      now = await open();
    }
    assert.equal(now, 0);
  });

  it("counts refused authentications by reason: failed login, refused session, address rate limit", async () => {
    const before = await scrape();
    const failures = (e: Exposition, reason: string) => e.value("hypervisor_auth_failures_total", { reason }) ?? 0;

    const failed = await new PublicClient(t.publicUrl, ORIGIN).login(phone, { username: ua, tamper: { badSignature: true } });
    assert.equal(failed.status, 401, failed.text);
    const stale = t.daemon.services.sessions.create(ua, "full");
    t.daemon.services.sessions.revoke(stale.session.sessionId);
    const revoked = new PublicClient(t.publicUrl, ORIGIN);
    revoked.cookie = stale.token;
    assert.equal((await revoked.get("/whoami")).status, 401);
    const flood = new PublicClient(t.publicUrl, ORIGIN);
    let limited = 0;
    for (let i = 0; i < 25; i++) if ((await flood.post("/auth/login/options", {})).status === 429) limited++;
    assert.ok(limited > 0, "the per-address limit answered 429");

    const after = await scrape();
    assert.equal(failures(after, "login") - failures(before, "login"), 1);
    assert.equal(failures(after, "session") - failures(before, "session"), 1);
    assert.equal(failures(after, "rate_limited_address") - failures(before, "rate_limited_address"), limited);
    assert.equal(failures(after, "registration"), failures(before, "registration"));
    // A signed-in user's traffic is no failure.
    assert.equal((await browser.get("/whoami")).status, 200);
    assert.equal(failures(await scrape(), "session"), failures(after, "session"));
  });
});
