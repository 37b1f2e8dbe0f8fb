import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { controlPlane, refusal, settle, stopClock } from "../../test/helpers/control-plane.js";
import { memAvailable } from "./idle-tiers.js";

const MiB = 1024 ** 2;

describe("idle tiers on the fake runtime", () => {
  it("freezes an idle sandbox, thaws it on the next request without a start, and stops it after the stop time", async (t) => {
    const { runtime, manager, sandboxStatus } = await controlPlane(t, { users: ["alice"], config: { idleFreezeMs: 1000, idleStopMs: 5000 } });
    stopClock(t, ["setInterval"]);
    manager.startIdleSweep(); // every 250 ms
    const first = await manager.ensure("alice", "live");
    const state = async () => (await sandboxStatus.status(["alice"])).find((s) => s.role === "live")!.state;

    t.mock.timers.tick(750);
    await settle();
    assert.equal(runtime.calls.freeze, 0, "not idle long enough yet");
    t.mock.timers.tick(250);
    await settle();
    assert.equal(runtime.calls.freeze, 1);
    assert.equal(await state(), "frozen", "the runtime reports it frozen");
    assert.equal(manager.isFrozen("alice", "a"), true);
    assert.deepEqual(manager.counts(), { running: 0, frozen: 1, starting: 0 });

    // The proxy's hot path: the same target at once, its thaw under way.
    const target = manager.current("alice", "live");
    assert.equal(target, first, "no start, no new endpoint");
    await settle();
    assert.equal(runtime.calls.thaw, 1);
    assert.equal(await state(), "running");
    assert.equal(runtime.calls.start, 1, "never started again");

    // Frozen again, then woken through ensure (what a WebSocket upgrade asks).
    t.mock.timers.tick(1000);
    await settle();
    assert.equal(runtime.calls.freeze, 2);
    assert.equal(await manager.ensure("alice", "live"), first);
    assert.equal(runtime.calls.thaw, 2);
    assert.equal(await state(), "running");

    // Left frozen past the stop time: stopped.
    t.mock.timers.tick(1000);
    await settle();
    assert.equal(await state(), "frozen");
    t.mock.timers.tick(4000);
    await settle();
    assert.equal(await state(), "stopped");
    assert.equal(manager.isRunning("alice", "a"), false);
  });

  it("never freezes a sandbox with an open WebSocket; idle time counts from its close", async (t) => {
    const { runtime, manager } = await controlPlane(t, { users: ["alice"], config: { idleFreezeMs: 1000 } });
    stopClock(t, ["setInterval"]);
    manager.startIdleSweep();
    const target = await manager.ensure("alice", "live");
    const close = manager.socketOpened(target);
    t.mock.timers.tick(10_000);
    await settle();
    assert.equal(runtime.calls.freeze, 0, "however long the socket stays open");
    close();
    t.mock.timers.tick(750);
    await settle();
    assert.equal(runtime.calls.freeze, 0);
    t.mock.timers.tick(250);
    await settle();
    assert.equal(runtime.calls.freeze, 1);
  });

  it("adopts a frozen sandbox as frozen, and thaws it on the next request", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    await cp.runtime.create({ user: "alice", slot: "a", generation: cp.generations.require(cp.g1), env: {}, limits: { memoryBytes: 1, nanoCpus: 1, pids: 1 } });
    await cp.runtime.start("alice", "a");
    await cp.runtime.freeze("alice", "a");
    await cp.manager.adopt();
    assert.equal(cp.manager.isFrozen("alice", "a"), true);
    const target = await cp.manager.ensure("alice", "live");
    assert.equal((await cp.runtime.inspect("alice", "a"))?.frozen, undefined, "thawed");
    assert.equal(await cp.runtime.health.probe(target.endpoint), true);
    assert.equal(cp.runtime.calls.start, 1, "adopted, not started again");
  });

  it("below the memory reserve stops frozen sandboxes least recently used first, then refuses starts with a 503", async (t) => {
    let available = 2048 * MiB;
    const freed: string[] = [];
    const cp = await controlPlane(t, {
      users: ["alice", "bob", "carol", "dave"],
      config: { idleFreezeMs: 1000, memoryReserveBytes: 512 * MiB },
      memAvailable: async () => available,
    });
    stopClock(t, ["setInterval"]);
    cp.manager.startIdleSweep();
    // Each stop frees 100 MiB, as a frozen sandbox's memory would.
    const stop = cp.runtime.stop.bind(cp.runtime);
    cp.runtime.stop = async (user, slot, ms) => {
      freed.push(user);
      available += 100 * MiB;
      return stop(user, slot, ms);
    };
    await cp.manager.ensure("carol", "live");
    t.mock.timers.tick(100);
    await cp.manager.ensure("alice", "live");
    t.mock.timers.tick(100);
    await cp.manager.ensure("bob", "live");
    t.mock.timers.tick(1000);
    await settle();
    assert.deepEqual(cp.manager.counts(), { running: 0, frozen: 3, starting: 0 }, "all three idle: frozen");
    await cp.manager.ensure("bob", "live"); // bob used again: the most recently used
    t.mock.timers.tick(500);
    await settle();
    assert.equal(cp.manager.isFrozen("bob", "a"), false);

    available = 350 * MiB; // 162 MiB short
    t.mock.timers.tick(250);
    await settle();
    await settle();
    assert.deepEqual(freed, ["carol", "alice"], "frozen ones only, least recently used first, until back above the reserve");
    assert.equal(cp.manager.isRunning("bob", "a"), true, "a running sandbox is never stopped for memory");

    available = 100 * MiB;
    await assert.rejects(cp.manager.ensure("dave", "live"), refusal("capacity_exhausted", /short of memory .* kept in reserve/));
    assert.equal((await cp.runtime.inspect("dave", "a"))?.running, undefined, "nothing of the refused start happened");
    const metrics = await cp.metrics.text();
    assert.match(metrics, /hypervisor_memory_pressure_total\{action="stopped"\} 2/);
    assert.match(metrics, /hypervisor_memory_pressure_total\{action="refused"\} 1/);
    assert.match(metrics, /hypervisor_sandboxes\{state="frozen"\} 0/);
    const actions = cp.audit.list({ limit: 10 }).map((e) => `${e.action} ${e.target} ${e.outcome}`);
    assert.deepEqual(actions.sort(), ["sandbox.start.refused dave/a refused", "sandbox.stop.memory alice/a ok", "sandbox.stop.memory carol/a ok"]);

    available = 2048 * MiB;
    await cp.manager.ensure("dave", "live");
  });

  it("counts frozen sandboxes toward memory, not toward HYPERVISOR_MAX_SANDBOXES: a thaw is never refused for capacity", async (t) => {
    const { manager } = await controlPlane(t, { users: ["alice", "bob", "carol"], config: { idleFreezeMs: 1000, maxSandboxes: 1 } });
    stopClock(t, ["setInterval"]);
    manager.startIdleSweep();
    await manager.ensure("alice", "live");
    await assert.rejects(manager.ensure("bob", "live"), refusal("capacity_exhausted"), "one running: the host is full");
    t.mock.timers.tick(1000);
    await settle();
    assert.equal(manager.isFrozen("alice", "a"), true);
    await manager.ensure("bob", "live");
    await manager.ensure("alice", "live");
    assert.deepEqual(manager.counts(), { running: 2, frozen: 0, starting: 0 }, "the frozen one thawed, over the limit of running ones");
    await assert.rejects(manager.ensure("carol", "live"), refusal("capacity_exhausted"));
  });

  it("a frozen live sandbox neither proves nor blocks a generation known-good (it answers nothing until thawed)", async (t) => {
    const cp = await controlPlane(t, { users: ["alice", "bob"], config: { idleFreezeMs: 1000, knownGoodAfterMs: 60_000 } });
    stopClock(t, ["setInterval"]);
    cp.manager.startIdleSweep();
    await cp.manager.ensure("alice", "live");
    await cp.manager.ensure("bob", "live");
    t.mock.timers.tick(1000);
    await settle();
    await cp.manager.ensure("alice", "live"); // alice is back; bob stays frozen
    assert.equal(cp.manager.isFrozen("bob", "a"), true);
    // Far past knownGoodAfterMs: the users' roles began on the real clock, before the mocked one.
    assert.deepEqual(await cp.knownGood.check(Date.parse("2100-01-01T00:00:00Z")), [cp.g1]);
    assert.deepEqual(cp.audit.list({ limit: 1 })[0]?.details, { automatic: true, users: 1 }, "judged on alice's running sandbox alone");
    assert.equal(cp.manager.isFrozen("bob", "a"), true, "the check did not wake it");
  });

  it("reads the host's available memory from /proc/meminfo", async () => {
    const bytes = await memAvailable();
    assert.ok(bytes > 0 && Number.isInteger(bytes));
  });
});
