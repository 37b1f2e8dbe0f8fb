import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";
import { baseUrl, getJson } from "../helpers/sandbox-client.js";

const sandbox = referenceSandboxCommand();
/** A generation of the reference sandbox that differs by its version string (and flags). */
const generation = (version: string, ...flags: string[]) => ({
  command: [...sandbox.command.filter((a) => !a.startsWith("--version=")), `--version=${version}`, ...flags],
  version,
});

describe("generations, deploy, swap and rollback (process runtime)", () => {
  let t: TestDaemon;
  const users = [testUser("rel-a"), testUser("rel-b")];
  const [ua, ub] = users as [string, string];
  let g1: number;
  let g2: number;
  let gBroken: number;

  const liveVersion = async (user: string) => {
    const target = await t.daemon.services.manager.ensure(user, "live");
    return (await getJson(`${baseUrl(target.endpoint)}/whoami`)).body.version as string;
  };
  const route = (user: string) => t.daemon.services.routing.route(user)!;

  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_KNOWN_GOOD_AFTER_MS: "600000", HYPERVISOR_START_TIMEOUT_MS: "4000" } });
    for (const name of users) assert.equal((await t.operator.post("/users", { name })).status, 201);
    g1 = (await t.operator.get("/generations")).body.generations[0].id;
  });
  after(async () => {
    for (const user of users) for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t.close();
  });

  it("records generations as candidates and lists where each runs", async () => {
    const added = await t.operator.post("/generations", generation("2"));
    assert.equal(added.status, 201);
    assert.equal(added.body.generation.state, "candidate");
    g2 = added.body.generation.id;
    gBroken = (await t.operator.post("/generations", generation("broken", "--fail-health"))).body.generation.id;
    const list = (await t.operator.get("/generations")).body.generations as { id: number; runsIn: { user: string; role: string }[] }[];
    const first = list.find((g) => g.id === g1)!;
    assert.deepEqual(
      first.runsIn
        .filter((p) => p.user === ua)
        .map((p) => p.role)
        .sort(),
      ["dev", "live"],
    );
  });

  it("refuses a rollback while nothing is known-good, with a clear 409", async () => {
    const res = await t.operator.post("/rollback", { users: [ua] });
    assert.equal(res.status, 409);
    assert.equal(res.body.error.code, "no_known_good");
  });

  it("deploys a generation into every named user's dev slot and waits until healthy", async () => {
    const res = await t.operator.post("/deploy", { generation: g2, users });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.ok, true);
    for (const user of users) {
      const dev = await t.daemon.services.manager.ensure(user, "dev");
      assert.equal((await getJson(`${baseUrl(dev.endpoint)}/whoami`)).body.version, "2");
      assert.equal(await liveVersion(user), sandbox.version, "live is untouched by a deploy");
    }
  });

  it("swaps live and dev, persisted before it answers", async () => {
    const before = route(ua);
    const res = await t.operator.post("/swap", { users: [ua] });
    assert.equal(res.status, 200);
    const [r] = res.body.results;
    assert.deepEqual(r.from, { slot: before.live, generation: g1 });
    assert.deepEqual(r.to, { slot: before.dev, generation: g2 });
    assert.equal(route(ua).live, before.dev, "SQLite holds the new mapping");
    assert.equal(await liveVersion(ua), "2");
    assert.equal(await liveVersion(ub), sandbox.version, "other users are untouched");
  });

  it("refuses to swap onto an unhealthy dev and changes nothing, but flips with force", async () => {
    const deploy = await t.operator.post("/deploy", { generation: gBroken, users: [ub] });
    assert.equal(deploy.status, 503, "a deploy whose sandbox never gets healthy fails");
    const before = route(ub);
    const refused = await t.operator.post("/swap", { users: [ub] });
    assert.equal(refused.status, 409);
    assert.ok(refused.ms < 3000, `refused within the health grace (${refused.ms} ms)`);
    assert.equal(refused.body.error.code, "unhealthy_target");
    assert.deepEqual(route(ub), before);
    assert.equal(await liveVersion(ub), sandbox.version);
    const forced = await t.operator.post("/swap", { users: [ub], force: true });
    assert.equal(forced.status, 200);
    assert.equal(route(ub).live, before.dev);
  });

  it("rolls back warm to the newest known-good generation other than live's", async () => {
    assert.equal((await t.operator.post(`/generations/${g1}/known-good`)).status, 200);
    // ua: live = g2, dev = g1 (still running): a warm rollback is a route flip.
    const res = await t.operator.post("/rollback", { users: [ua] });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.results[0].path, "warm");
    assert.equal(res.body.results[0].to.generation, g1);
    assert.equal(await liveVersion(ua), sandbox.version);
  });

  it("rolls back cold when no sandbox of the known-good generation exists, within the deadline", async () => {
    // ub: live = broken (forced), dev = g1 with its sandbox removed.
    const { manager, routing, runtime } = t.daemon.services;
    await manager.stop(ub, "dev");
    await runtime.remove(ub, routing.slotOf(ub, "dev"), { removeData: false });
    const res = await t.operator.post("/rollback", { users: [ub] });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.results[0].path, "cold");
    assert.ok(res.body.durationMs < 10_000);
    assert.equal(await liveVersion(ub), sandbox.version);
  });

  it("serialises concurrent swaps of one user: each flip is whole", async () => {
    const before = route(ua);
    const results = await Promise.all([t.operator.post("/swap", { users: [ua] }), t.operator.post("/swap", { users: [ua] })]);
    assert.deepEqual(
      results.map((r) => r.status),
      [200, 200],
    );
    const after = route(ua);
    assert.equal(after.version, before.version + 2);
    assert.equal(after.live, before.live);
    assert.notDeepEqual(results[0]!.body.results[0].to, results[1]!.body.results[0].to);
  });

  it("answers bad input with a clear error and changes nothing", async () => {
    const before = users.map(route);
    const cases: [string, unknown, number, string][] = [
      ["/deploy", { generation: 999_999 }, 404, "not_found"],
      ["/deploy", { generation: g2, users: [testUser("nobody")] }, 404, "not_found"],
      ["/deploy", { generation: "two" }, 400, "validation_failed"],
      ["/swap", { users: ["Not A User"] }, 400, "validation_failed"],
      ["/swap", { users: [testUser("nobody")] }, 404, "not_found"],
      ["/swap", { force: "yes" }, 400, "validation_failed"],
      ["/rollback", { to: 999_999 }, 404, "not_found"],
      ["/rollback", { users: [] }, 400, "validation_failed"],
      ["/generations", { image: "x", command: ["y"] }, 400, "validation_failed"],
      ["/generations", { image: "localhost/anything:1" }, 400, "bad_request"],
      ["/generations/999999/known-good", undefined, 404, "not_found"],
      ["/generations/abc/bad", undefined, 400, "validation_failed"],
    ];
    for (const [path, body, status, code] of cases) {
      const res = await t.operator.post(path, body);
      assert.equal(res.status, status, `${path} ${JSON.stringify(body)}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.code, code, path);
    }
    const junk = await t.operator.send("POST", "/swap", "{ not json");
    assert.equal(junk.status, 400);
    assert.deepEqual(users.map(route), before);
  });

  it("records every release action in the audit log with outcome and duration", async () => {
    const entries = (await t.operator.get("/audit?limit=200")).body.entries as {
      action: string;
      outcome: string;
      durationMs: number | null;
      details: { code?: string } | null;
    }[];
    for (const action of ["deploy", "swap", "swap.force", "rollback", "generation.add", "generation.known-good"]) {
      const entry = entries.find((e) => e.action === action);
      assert.ok(entry, `audit has ${action}`);
      assert.equal(typeof entry.durationMs, "number");
    }
    assert.ok(
      entries.some((e) => e.action === "swap" && e.outcome === "error"),
      "the refused swap is audited as an error",
    );
    const refusedWhole = entries.find((e) => e.action === "deploy" && e.details?.code === "not_found");
    assert.ok(refusedWhole, "a deploy refused as a whole (unknown generation) is audited too");
  });

  it("marks a generation known-good after it served live healthily long enough", async () => {
    const g3 = (await t.operator.post("/generations", generation("3"))).body.generation.id as number;
    await t.operator.post("/deploy", { generation: g3, users: [ua] });
    await t.operator.post("/swap", { users: [ua] });
    const { knownGood, generations } = t.daemon.services;
    assert.deepEqual(await knownGood.check(Date.now()), [], "not before the time has passed");
    assert.deepEqual(await knownGood.check(Date.now() + 600_001), [g3]);
    assert.equal(generations.get(g3)!.state, "known-good");
  });
});

describe("rollback deadline (process runtime)", () => {
  let t: TestDaemon;
  const user = testUser("rel-deadline");
  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_ROLLBACK_DEADLINE_MS: "300" } });
    await t.operator.post("/users", { name: user });
  });
  after(async () => {
    for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t.close();
  });

  it("fails cleanly with live untouched when the deadline is too short, and never flips later", async () => {
    const slow = (await t.operator.post("/generations", generation("slow", "--slow-start-ms=1500"))).body.generation.id as number;
    await t.operator.post(`/generations/${slow}/known-good`);
    await t.daemon.services.manager.ensure(user, "live");
    const before = t.daemon.services.routing.route(user)!;
    const res = await t.operator.post("/rollback", { users: [user] });
    assert.equal(res.status, 504);
    assert.equal(res.body.error.code, "deadline_exceeded");
    assert.ok(res.ms < 1500, `answered at the deadline (${res.ms} ms)`);
    await sleep(2500); // the slow sandbox is healthy by now
    assert.deepEqual(t.daemon.services.routing.route(user), before, "live did not change after the failure was reported");
  });
});
