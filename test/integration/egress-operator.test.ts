import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { explain, runCli } from "../helpers/hypervisorctl.js";
import { testUser } from "../helpers/run-id.js";

const SECRET = "sk-operator-secret-0a1b2c3d4e5f6a7b8c9d";
const OWN_KEY = "sk-own-key-of-the-user-9f8e7d6c5b4a";

describe("egress through the operator API and hypervisorctl", () => {
  let t: TestDaemon;
  let dir: string;
  let gateway: Server;
  const user = testUser("egressop");
  const ctl = (...args: string[]) => runCli(["--socket", t.daemon.operatorSocket, ...args]);
  const routesFile = () => join(dir, "routes.json");
  const writeRoutes = (routes: unknown) => writeFileSync(routesFile(), JSON.stringify(routes));
  const route = (name: string, secret: string) => ({ name, upstream: "https://provider.invalid", header: "x-api-key", secret, userKeys: true, rpm: 5 });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "hv-egress-op-"));
    mkdirSync(join(dir, "secrets"));
    writeFileSync(join(dir, "secrets", "egress-one"), SECRET);
    writeFileSync(join(dir, "secrets-key"), "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9");
    writeRoutes([route("one", "one"), route("two", "two")]);
    t = await bootDaemon({
      env: {
        HYPERVISOR_EGRESS_ROUTES_FILE: routesFile(),
        HYPERVISOR_EGRESS_SECRETS_DIR: join(dir, "secrets"),
        HYPERVISOR_EGRESS_SECRETS_KEY_FILE: join(dir, "secrets-key"),
      },
    });
    // The gateway's part, played here: a caller identified, its request handed to the route handler.
    gateway = createServer((req, res) => t.daemon.services.egressCredentials.handleRoute(req, res, { user, slot: "a", generation: 1 }));
    await new Promise<void>((resolve) => gateway.listen(0, "127.0.0.1", resolve));
  });
  after(async () => {
    gateway?.close();
    await t?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("lists the routes and whether each secret is loaded, never a value; reloads; a failed reload keeps the old routes and says why", async () => {
    const listed = await ctl("egress", "routes");
    assert.equal(listed.code, 0, explain(listed));
    assert.match(listed.stdout, /^one\s+https:\/\/provider\.invalid\/\s+x-api-key\s+one\s+yes/m);
    assert.match(listed.stdout, /^two\s+.*\stwo\s+NO/m);
    const json = await ctl("--json", "egress", "routes");
    assert.ok(!json.stdout.includes(SECRET), "no secret value in the operator API");

    writeFileSync(join(dir, "secrets", "egress-two"), "sk-second-secret-value-123456");
    const reloaded = await ctl("egress", "reload");
    assert.equal(reloaded.code, 0, explain(reloaded));
    assert.match(reloaded.stdout, /reloaded: 2 route\(s\)/);
    assert.match((await ctl("egress", "routes")).stdout, /^two\s+.*\stwo\s+yes/m);

    writeRoutes([route("one", "one"), { ...route("three", "three"), upstream: "http://plain.invalid" }]);
    const failed = await ctl("egress", "reload");
    assert.notEqual(failed.code, 0);
    assert.match(failed.stderr, /previous routes stay: .*route "three" \(#2\), field "upstream": must start with https:\/\//);
    assert.match((await ctl("egress", "routes")).stdout, /^two\s/m, "the old routes stay");
    const row = t.daemon.services.audit.list({ limit: 20 }).find((e) => e.action === "egress.reload" && e.outcome === "error");
    assert.ok(row, "the failed reload is audited");
    assert.ok(!JSON.stringify(row).includes(SECRET));
    writeRoutes([route("one", "one"), route("two", "two")]);
  });

  it("the account page lists the routes that take a user's key; without the secrets key it says the feature is off", async () => {
    const other = testUser("egresspage");
    await ctl("users", "add", other);
    const page = async (daemon: TestDaemon) => {
      const { token } = daemon.daemon.services.sessions.create(other, "full");
      const res = await fetch(`${daemon.publicUrl}/_hv/account`, { headers: { cookie: `hv_session=${token}` } });
      assert.equal(res.status, 200);
      return res.text();
    };
    const on = await page(t);
    assert.match(on, /data-egress-form="one"/);
    assert.match(on, /id="egress-key-one">the operator&#39;s key|id="egress-key-one">the operator's key/);

    // The same routes, no egress-secrets-key: the page says why there is nothing to store.
    const off = await bootDaemon({ env: { HYPERVISOR_EGRESS_ROUTES_FILE: routesFile(), HYPERVISOR_EGRESS_SECRETS_DIR: join(dir, "secrets") } });
    try {
      await runCli(["--socket", off.daemon.operatorSocket, "users", "add", other]);
      const html = await page(off);
      assert.match(html, /id="egress-keys-off">Your own keys are off on this hypervisor/);
      assert.doesNotMatch(html, /data-egress-form/);
    } finally {
      await off.close();
    }
  });

  it("shows calls and refusals in the log and the usage, and a user's own key goes with the user", async () => {
    await ctl("users", "add", user);
    const port = (gateway.address() as AddressInfo).port;
    const get = (path: string) =>
      new Promise<number>((resolve, reject) => {
        const req = request({ host: "127.0.0.1", port, path }, (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
        });
        req.on("error", reject);
        req.end();
      });
    assert.equal(await get("/nowhere/v1?token=QUERYVALUE"), 404);
    const log = await ctl("egress", "log", "--user", user);
    assert.equal(log.code, 0, explain(log));
    assert.match(log.stdout, new RegExp(`${user}\\s+a\\s+1\\s+route:nowhere\\s+GET\\s+/v1\\s+404`));
    assert.ok(!log.stdout.includes("QUERYVALUE"), "no query string in the log");

    const usage = await ctl("egress", "usage");
    assert.equal(usage.code, 0, explain(usage));

    t.daemon.services.egressCredentials.userKeys.set(user, "one", OWN_KEY);
    assert.ok(!(await ctl("--json", "egress", "routes")).stdout.includes(OWN_KEY));
    const removed = await ctl("users", "remove", user);
    assert.equal(removed.code, 0, explain(removed));
    const left = t.daemon.services.db.prepare("SELECT COUNT(*) AS n FROM egress_user_keys WHERE user = ?").get(user) as { n: number };
    assert.equal(left.n, 0, "the user's keys were deleted with the user");
  });
});
