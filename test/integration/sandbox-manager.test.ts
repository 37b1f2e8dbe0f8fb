import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { HypervisorError } from "../../hypervisor/errors.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";
import { baseUrl, getJson } from "../helpers/sandbox-client.js";

describe("sandbox manager", () => {
  let t: TestDaemon;
  const alice = testUser("alice");
  const bob = testUser("bob");
  const carol = testUser("carol");

  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_MAX_SANDBOXES: "3", HYPERVISOR_IDLE_STOP_MS: "800" } });
    for (const name of [alice, bob, carol]) assert.equal((await t.operator.post("/users", { name })).status, 201);
  });
  after(async () => {
    const { manager } = t.daemon.services;
    for (const user of [alice, bob, carol]) for (const role of ["live", "dev"] as const) await manager.stop(user, role).catch(() => undefined);
    await t.close();
  });

  it("shares one start between concurrent callers", async () => {
    const { manager, runtime } = t.daemon.services;
    const targets = await Promise.all(Array.from({ length: 10 }, () => manager.ensure(alice, "live")));
    assert.equal(new Set(targets.map((x) => `${x.endpoint.host}:${x.endpoint.port}`)).size, 1);
    const sandboxes = (await runtime.list()).filter((i) => i.user === alice);
    assert.equal(sandboxes.length, 1);
    assert.equal((await getJson(`${baseUrl(targets[0]!.endpoint)}/health`)).status, 200);
  });

  it("routes live and dev to different slots with their own data", async () => {
    const { manager } = t.daemon.services;
    const live = await manager.ensure(alice, "live");
    const dev = await manager.ensure(alice, "dev");
    assert.notEqual(live.slot, dev.slot);
    const who = await getJson<{ slot: string }>(`${baseUrl(dev.endpoint)}/whoami`);
    assert.equal(who.body.slot, dev.slot);
  });

  it("refuses a start beyond HYPERVISOR_MAX_SANDBOXES with a clear 503 and starts nothing", async () => {
    const { manager, runtime } = t.daemon.services;
    // alice live + dev + bob live = 3 = the limit. Each is held busy, as an open WebSocket would,
    // so the suite's short idle stop cannot free a place while a slow machine runs this test.
    const releases: (() => void)[] = [];
    try {
      // Held the moment each is ready: a slow start of the next must not leave the last one idle.
      for (const [user, role] of [
        [alice, "live"],
        [alice, "dev"],
        [bob, "live"],
      ] as const)
        releases.push(manager.socketOpened(await manager.ensure(user, role)));
      const before = (await runtime.list()).filter((i) => i.running).length;
      const res = await t.operator.post(`/sandboxes/${carol}/live/start`);
      assert.equal(res.status, 503);
      assert.equal(res.body.error.code, "capacity_exhausted");
      assert.match(res.body.error.message, /HYPERVISOR_MAX_SANDBOXES/);
      assert.ok(res.headers["retry-after"]);
      assert.equal((await runtime.list()).filter((i) => i.running).length, before);
      await assert.rejects(manager.ensure(carol, "dev"), (e: unknown) => e instanceof HypervisorError && e.code === "capacity_exhausted");
    } finally {
      for (const release of releases) release();
    }
  });

  it("stops idle sandboxes, but not one with an open WebSocket", async () => {
    const { manager, sandboxStatus, runtime } = t.daemon.services;
    await manager.stop(alice, "dev");
    const busy = await manager.ensure(alice, "live");
    const idle = await manager.ensure(bob, "live");
    const release = manager.socketOpened(busy);
    try {
      await sleep(2000); // idle limit 800 ms, swept every 250 ms
      const running = new Map((await runtime.list()).map((i) => [`${i.user}/${i.slot}`, i.running]));
      assert.equal(running.get(`${alice}/${busy.slot}`), true, "a sandbox with an open WebSocket keeps running");
      assert.equal(running.get(`${bob}/${idle.slot}`), false, "an idle sandbox is stopped");
    } finally {
      release();
    }
    const statuses = await sandboxStatus.status([bob]);
    assert.equal(statuses.find((s) => s.role === "live")?.state, "stopped");
  });

  it("starts a stopped sandbox again on demand with its data", async () => {
    const { manager } = t.daemon.services;
    const target = await manager.ensure(bob, "live");
    assert.equal((await getJson(`${baseUrl(target.endpoint)}/health`)).status, 200);
  });
});
