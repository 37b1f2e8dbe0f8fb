import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { controlPlane, refusal, settle, stopClock, track, type ControlPlane } from "../../test/helpers/control-plane.js";
import type { Slot } from "../../proxy/target.js";

/** A sandbox the runtime has without this manager having made it: left by an earlier daemon. */
async function leftBehind(cp: ControlPlane, user: string, slot: Slot, generationId: number, running = true): Promise<void> {
  const generation = cp.generations.require(generationId);
  await cp.runtime.create({ user, slot, generation, env: {}, limits: { memoryBytes: 1, nanoCpus: 1, pids: 1 } });
  if (running) await cp.runtime.start(user, slot);
}

describe("sandbox manager on the fake runtime", () => {
  it("shares one start between ten concurrent ensures, then serves it from memory", async (t) => {
    const { runtime, manager, sandboxStatus, userStore } = await controlPlane(t, { users: ["alice"] });
    const hold = runtime.holdStart("alice", "a");
    const ensures = Array.from({ length: 10 }, () => manager.ensure("alice", "live"));
    await hold.reached;
    assert.equal((await sandboxStatus.status(["alice"])).find((s) => s.role === "live")?.state, "starting");
    assert.deepEqual(manager.counts(), { running: 0, frozen: 0, starting: 1 });
    hold.release();
    const targets = await Promise.all(ensures);
    assert.equal(new Set(targets).size, 1, "every caller gets the same target");
    assert.equal(runtime.calls.create, 1);
    assert.equal(runtime.calls.start, 1);
    assert.ok(userStore.slot("alice", "a")!.lastStartedAt, "the start is recorded");

    const calls = runtime.calls;
    assert.equal(await manager.ensure("alice", "live"), targets[0]);
    assert.deepEqual(runtime.calls, calls, "a running target costs no runtime call");
  });

  it("refuses a start beyond maxSandboxes with capacity_exhausted and starts nothing", async (t) => {
    const { runtime, manager } = await controlPlane(t, { users: ["alice", "bob"], config: { maxSandboxes: 1 } });
    const hold = runtime.holdStart("alice", "a");
    const alice = manager.ensure("alice", "live");
    await hold.reached;
    await assert.rejects(manager.ensure("bob", "live"), {
      ...refusal("capacity_exhausted", /HYPERVISOR_MAX_SANDBOXES/),
      details: { max: 1, retryAfterSeconds: 30 },
    });
    hold.release();
    await alice;
    await assert.rejects(manager.ensure("bob", "live"), refusal("capacity_exhausted"), "a running sandbox counts as well as a starting one");
    assert.equal(runtime.calls.create, 1);
    assert.equal(runtime.calls.start, 1);
    assert.equal(await runtime.inspect("bob", "a"), undefined);
    assert.equal(manager.isRunning("bob", "a"), false);
  });

  it("lets a stop during a held start wait for it, and the sandbox ends stopped", async (t) => {
    const { runtime, manager, sandboxStatus, userStore } = await controlPlane(t, { users: ["alice"] });
    const hold = runtime.holdStart("alice", "a");
    const starting = manager.ensure("alice", "live");
    await hold.reached;
    const stopping = track(manager.stop("alice", "live"));
    await settle();
    assert.equal(stopping.done(), false, "the stop waits for the start");
    assert.equal(runtime.calls.stop, 0);
    hold.release();
    await starting;
    await stopping.promise;
    assert.equal(runtime.calls.stop, 1);
    assert.equal((await runtime.inspect("alice", "a"))?.running, false);
    assert.equal(manager.isRunning("alice", "a"), false, "the finished start did not resurrect it");
    assert.equal((await sandboxStatus.status(["alice"])).find((s) => s.role === "live")?.state, "stopped");
    assert.ok(userStore.slot("alice", "a")!.lastStoppedAt);
  });

  it("fails a start whose sandbox exits before it is healthy with start_timeout, and does not cache it", async (t) => {
    const { runtime, manager } = await controlPlane(t, { users: ["alice"] });
    const clock = stopClock(t);
    runtime.setHealthy("alice", "a", false);
    const hold = runtime.holdStart("alice", "a");
    const ensure = track(manager.ensure("alice", "live"));
    await hold.reached;
    hold.release();
    await settle();
    runtime.crash("alice", "a", 3);
    await clock.runUntil(ensure.done, 25);
    await assert.rejects(ensure.promise, refusal("start_timeout", /exited before it became healthy/));
    assert.ok(Date.now() < 10_000, "it gave up once the exit was seen, not at the start timeout");
    assert.equal(manager.isRunning("alice", "a"), false);
    assert.deepEqual(manager.counts(), { running: 0, frozen: 0, starting: 0 });

    runtime.setHealthy("alice", "a", true);
    await manager.ensure("alice", "live");
    assert.equal(runtime.calls.start, 2, "the next ensure starts it again");
  });

  it("fails a start that never gets healthy at the start timeout, and does not cache it", async (t) => {
    const { runtime, manager } = await controlPlane(t, { users: ["alice"], config: { startTimeoutMs: 4000 } });
    stopClock(t);
    runtime.setHealthy("alice", "a", false);
    const ensure = track(manager.ensure("alice", "live"));
    await settle();
    t.mock.timers.tick(4000);
    await settle();
    assert.equal(ensure.done(), true);
    await assert.rejects(ensure.promise, {
      ...refusal("start_timeout", /did not become healthy within 4000 ms/),
      details: { user: "alice", slot: "a", retryAfterSeconds: 4 },
    });
    assert.equal(manager.isRunning("alice", "a"), false);

    runtime.setHealthy("alice", "a", true);
    await manager.ensure("alice", "live");
    assert.equal(runtime.calls.start, 1, "the sandbox that kept running is taken as it is once healthy");
    assert.equal(manager.isRunning("alice", "a"), true);
  });

  it("adopts running sandboxes of known users on their slot's generation, and leaves the rest", async (t) => {
    const cp = await controlPlane(t, { users: ["alice", "bob"] });
    const { runtime, manager, users } = cp;
    const g2 = cp.addGeneration("2");
    await leftBehind(cp, "alice", "a", cp.g1);
    await leftBehind(cp, "alice", "b", cp.g1, false);
    await leftBehind(cp, "bob", "a", cp.g1);
    users.setSlotGeneration("bob", "a", g2); // assigned, but the old container still runs
    await leftBehind(cp, "stranger", "a", cp.g1);

    assert.deepEqual(await manager.adopt(), { adopted: 1, ignored: 1 });
    assert.equal(manager.isRunning("alice", "a"), true);
    assert.equal(manager.isRunning("alice", "b"), false, "a stopped sandbox is not adopted");
    assert.equal(manager.isRunning("bob", "a"), false, "a stale generation is not adopted");
    assert.equal((await runtime.inspect("stranger", "a"))?.running, true, "an unknown user's sandbox is left alone");

    const starts = runtime.calls.start;
    await manager.ensure("alice", "live");
    assert.equal(runtime.calls.start, starts, "the adopted sandbox serves without a start");
    await manager.ensure("bob", "live");
    assert.equal((await runtime.inspect("bob", "a"))?.generationId, g2, "the stale one is replaced on demand");
    assert.equal(runtime.calls.remove, 1);
  });

  it("does not adopt a running sandbox that fails its health check: the next start waits for it instead", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    const { runtime, manager } = cp;
    // What a daemon killed between a sandbox's start and its first healthy answer leaves behind.
    await leftBehind(cp, "alice", "a", cp.g1);
    runtime.setHealthy("alice", "a", false);

    assert.deepEqual(await manager.adopt(), { adopted: 0, ignored: 0 });
    assert.equal(manager.isRunning("alice", "a"), false, "not routed to before it answers");

    const starts = runtime.calls.start;
    const ensure = manager.ensure("alice", "live");
    runtime.setHealthy("alice", "a", true);
    await ensure;
    assert.equal(runtime.calls.start, starts, "the running sandbox is waited for, not started a second time");
    assert.equal(manager.isRunning("alice", "a"), true);
  });

  it("forgets an invalidated target, but not for a stale endpoint, and finds it again on demand", async (t) => {
    const { runtime, manager } = await controlPlane(t, { users: ["alice"] });
    const target = await manager.ensure("alice", "live");
    manager.invalidate({ ...target, endpoint: { ...target.endpoint, port: target.endpoint.port + 1 } });
    assert.equal(manager.isRunning("alice", "a"), true, "another endpoint's failure says nothing of this one");
    manager.invalidate(target);
    assert.equal(manager.isRunning("alice", "a"), false);
    const again = await manager.ensure("alice", "live");
    assert.notEqual(again, target, "the runtime was asked again");
    assert.deepEqual(again.endpoint, target.endpoint);
    assert.equal(runtime.calls.start, 1, "a sandbox that still runs is not started again");
  });

  it("stops idle sandboxes on the sweep, but not one with an open socket until it closes", async (t) => {
    const { runtime, manager, userStore } = await controlPlane(t, { users: ["alice", "bob"], config: { idleStopMs: 1000 } });
    stopClock(t, ["setInterval"]);
    manager.startIdleSweep(); // every 250 ms
    const busy = await manager.ensure("alice", "live");
    await manager.ensure("bob", "live");
    const closeSocket = manager.socketOpened(busy);
    const running = async (user: string) => (await runtime.inspect(user, "a"))?.running;

    t.mock.timers.tick(999);
    await settle();
    assert.equal(runtime.calls.stop, 0, "nothing is idle yet");
    t.mock.timers.tick(1);
    await settle();
    assert.equal(await running("bob"), false, "idle for idleStopMs: stopped");
    assert.ok(userStore.slot("bob", "a")!.lastStoppedAt);
    assert.equal(await running("alice"), true, "an open socket keeps it running");

    t.mock.timers.tick(5000);
    await settle();
    assert.equal(await running("alice"), true, "however long the socket stays open");
    closeSocket();
    t.mock.timers.tick(750);
    await settle();
    assert.equal(await running("alice"), true, "idle time counts from the socket's close");
    t.mock.timers.tick(250);
    await settle();
    assert.equal(await running("alice"), false);
    assert.equal(manager.runningCount(), 0);
  });

  it("restarts a slot: a stop, then a fresh start on another endpoint", async (t) => {
    const { runtime, manager } = await controlPlane(t, { users: ["alice"] });
    const first = await manager.ensure("alice", "dev");
    const second = await manager.restart("alice", "dev");
    assert.equal(second.slot, "b");
    assert.notEqual(second.endpoint.port, first.endpoint.port);
    assert.deepEqual([runtime.calls.stop, runtime.calls.start], [1, 2]);
  });

  describe("ensureHealthy refuses with unhealthy_target", () => {
    it("when the sandbox runs but keeps failing its health check through the grace", async (t) => {
      const { runtime, manager } = await controlPlane(t, { users: ["alice"] });
      manager.invalidate(await manager.ensure("alice", "dev"));
      runtime.setHealthy("alice", "b", false);
      stopClock(t);
      const check = track(manager.ensureHealthy("alice", "b"));
      await settle();
      t.mock.timers.tick(1999);
      await settle();
      assert.equal(check.done(), false, "a two-second grace");
      t.mock.timers.tick(25); // the poll that finds the grace over
      await settle();
      await assert.rejects(check.promise, refusal("unhealthy_target", /running but fails its health check/));
      assert.equal(runtime.calls.start, 1, "no start for a sandbox that runs");
    });

    it("when the sandbox cannot be started", async (t) => {
      const { runtime, manager } = await controlPlane(t, { users: ["alice"], config: { maxSandboxes: 1 } });
      await manager.ensure("alice", "live");
      await assert.rejects(manager.ensureHealthy("alice", "b"), refusal("unhealthy_target", /is not healthy: all 1 sandboxes are in use/));
      assert.equal(runtime.calls.start, 1);
    });

    it("when the running sandbox fails its health check now", async (t) => {
      const { runtime, manager } = await controlPlane(t, { users: ["alice"] });
      await manager.ensure("alice", "dev");
      runtime.setHealthy("alice", "b", false);
      await assert.rejects(manager.ensureHealthy("alice", "b"), refusal("unhealthy_target", /failed its health check/));
    });

    it("and passes a healthy one", async (t) => {
      const { manager } = await controlPlane(t, { users: ["alice"] });
      await manager.ensureHealthy("alice", "b");
      assert.equal(manager.isRunning("alice", "b"), true);
    });
  });

  it("surfaces runtime_unavailable while the runtime is down, and still serves what runs", async (t) => {
    const { runtime, manager, sandboxStatus } = await controlPlane(t, { users: ["alice"] });
    const live = await manager.ensure("alice", "live");
    runtime.setAvailable(false);
    await assert.rejects(manager.ensure("alice", "dev"), refusal("runtime_unavailable"));
    await assert.rejects(manager.ensureHealthy("alice", "b"), refusal("runtime_unavailable"));
    await assert.rejects(sandboxStatus.status(), refusal("runtime_unavailable"));
    assert.equal(await manager.ensure("alice", "live"), live, "the running target needs no runtime call");
    assert.deepEqual(manager.counts(), { running: 1, frozen: 0, starting: 0 }, "the failed start is not cached");

    runtime.setAvailable(true);
    assert.equal((await manager.ensure("alice", "dev")).slot, "b");
  });

  it("gives a role's log lines, oldest first, follows them until the sandbox stops, and names the command for one never started", async (t) => {
    const { runtime, manager } = await controlPlane(t, { users: ["alice"] });
    const never = async () => {
      for await (const _ of manager.logs("alice", "dev")) break;
    };
    await assert.rejects(never(), refusal("not_found", /alice's dev sandbox has not been started.*hypervisorctl sandboxes start alice dev/));
    await manager.ensure("alice", "live");
    await manager.healthy("alice", "a");
    const lines: string[] = [];
    for await (const line of manager.logs("alice", "live", { tail: 1 })) lines.push(line);
    assert.deepEqual(lines, ["GET /health 200"]);

    const followed: string[] = [];
    const following = (async () => {
      for await (const line of manager.logs("alice", "live", { tail: 0, follow: true })) followed.push(line);
    })();
    await manager.healthy("alice", "a");
    runtime.crash("alice", "a", 3);
    await following;
    assert.deepEqual(followed, ["GET /health 200", "exited with code 3"]);
  });

  it("reports a start's progress to listeners: creating (a new sandbox), starting, waiting for health, then healthy", async (t) => {
    const { manager } = await controlPlane(t, { users: ["alice"] });
    const seen: string[] = [];
    const stop = manager.onStartProgress((p) => seen.push(`${p.user}/${p.slot} ${p.phase}`));
    await manager.ensure("alice", "live");
    stop();
    await manager.ensure("alice", "dev");
    assert.deepEqual(seen, ["alice/a creating", "alice/a starting", "alice/a waiting for health", "alice/a healthy"]);
  });

  it("removes a user's sandboxes, keeping their data unless purged", async (t) => {
    const { runtime, manager } = await controlPlane(t, { users: ["alice", "bob"] });
    await manager.ensure("alice", "live");
    await manager.ensure("bob", "live");
    runtime.data("alice", "a").set("notes", "kept");
    await manager.removeSandboxes("alice", { removeData: false });
    assert.equal(await runtime.inspect("alice", "a"), undefined);
    assert.equal(manager.isRunning("alice", "a"), false);
    assert.equal(runtime.data("alice", "a").get("notes"), "kept");
    await manager.removeSandboxes("bob", { removeData: true });
    assert.throws(() => runtime.data("bob", "a"), refusal("not_found"));
  });
});
