import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { RouteEntry } from "../../proxy/route-table.js";
import { controlPlane, refusal, settle, stopClock, track, type ControlPlane } from "../../test/helpers/control-plane.js";
import type { UserResult } from "./release-controller.js";

/** Every route change the listeners are told of, in order. */
function recordRouteChanges(cp: ControlPlane): [string, RouteEntry, RouteEntry][] {
  const changes: [string, RouteEntry, RouteEntry][] = [];
  cp.routing.onRouteChange((user, replaced, installed) => changes.push([user, replaced, installed]));
  return changes;
}

/** The user's live serves `generation` from slot b; dev (slot a) still runs the first generation. */
async function liveOn(cp: ControlPlane, user: string, generation: number): Promise<void> {
  await cp.manager.ensure(user, "live");
  const [deployed] = await cp.releases.deploy(generation, [user]);
  const [swapped] = await cp.releases.swap([user], false);
  assert.ok(deployed?.ok && swapped?.ok, "released");
  assert.equal(cp.routing.generationOf(user, "live"), generation);
}

/** Waits until nothing holds the user's lock any more: whatever ran for the user has finished. */
const quiet = (cp: ControlPlane, user: string) => cp.users.withUserLock(user, async () => undefined);

describe("release controller: swap", () => {
  it("keeps serving the old live when dev is unhealthy, and flips only when forced", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    const changes = recordRouteChanges(cp);
    await cp.manager.ensure("alice", "dev");
    cp.runtime.setHealthy("alice", "b", false);
    const [refused] = await cp.releases.swap(["alice"], false);
    assert.equal(refused?.ok, false);
    assert.equal(refused?.error?.code, "unhealthy_target");
    assert.deepEqual(cp.store.route("alice"), { user: "alice", live: "a", dev: "b", version: 0 });
    assert.equal(cp.routing.slotOf("alice", "live"), "a");
    assert.equal(changes.length, 0);

    const [forced] = await cp.releases.swap(["alice"], true);
    assert.equal(forced?.ok, true);
    assert.deepEqual(cp.store.route("alice"), { user: "alice", live: "b", dev: "a", version: 1 });
    assert.equal(changes.length, 1);
  });

  it("flips live and dev, persisted before the listeners hear of it, with what was replaced and installed", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    const changes = recordRouteChanges(cp);
    const seenInSqlite: unknown[] = [];
    cp.routing.onRouteChange((user) => seenInSqlite.push(cp.store.route(user)));
    const [result] = await cp.releases.swap(["alice"], false);
    assert.equal(result?.ok, true);
    assert.deepEqual(result?.from, { slot: "a", generation: cp.g1 });
    assert.deepEqual(result?.to, { slot: "b", generation: cp.g1 });
    assert.equal(cp.manager.isRunning("alice", "b"), true, "dev was started and checked first");
    assert.deepEqual(cp.store.route("alice"), { user: "alice", live: "b", dev: "a", version: 1 });
    assert.deepEqual(changes, [["alice", { live: "a", dev: "b", version: 0 }, { live: "b", dev: "a", version: 1 }]]);
    assert.deepEqual(seenInSqlite, [{ user: "alice", live: "b", dev: "a", version: 1 }]);
  });

  it("serialises two swaps of one user: the second waits for the first's held start", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    const changes = recordRouteChanges(cp);
    const hold = cp.runtime.holdStart("alice", "b");
    const first = cp.releases.swap(["alice"], false);
    await hold.reached;
    const calls = cp.runtime.calls;
    const second = track(cp.releases.swap(["alice"], false));
    await settle();
    assert.equal(second.done(), false);
    assert.deepEqual(cp.runtime.calls, calls, "the second swap has not touched the runtime yet");
    assert.equal(cp.store.route("alice")?.version, 0);
    hold.release();
    const [[r1], [r2]] = await Promise.all([first, second.promise]);
    assert.deepEqual([r1?.from?.slot, r1?.to?.slot], ["a", "b"]);
    assert.deepEqual([r2?.from?.slot, r2?.to?.slot], ["b", "a"], "the second swap saw the first one's result");
    assert.equal(cp.manager.isRunning("alice", "a"), true, "and checked the slot it flipped to");
    assert.deepEqual(
      changes.map(([, , installed]) => installed.version),
      [1, 2],
    );
  });

  it("lets swaps of different users proceed in parallel", async (t) => {
    const cp = await controlPlane(t, { users: ["alice", "bob"] });
    const hold = cp.runtime.holdStart("alice", "b");
    let bobDone!: (r: UserResult) => void;
    const bob = new Promise<UserResult>((resolve) => (bobDone = resolve));
    const swaps = cp.releases.swap(["alice", "bob"], false, (r) => r.user === "bob" && bobDone(r));
    await hold.reached;
    assert.equal((await bob).ok, true, "bob's swap finished while alice's start is held");
    assert.equal(cp.store.route("bob")?.version, 1);
    assert.equal(cp.store.route("alice")?.version, 0);
    hold.release();
    assert.deepEqual(
      (await swaps).map((r) => [r.user, r.ok]),
      [
        ["alice", true],
        ["bob", true],
      ],
    );
    assert.equal(cp.store.route("alice")?.version, 1);
  });
});

describe("release controller: deploy", () => {
  it("assigns the generation to dev only and restarts dev on it, leaving live running", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    const g2 = cp.addGeneration("2");
    const live = await cp.manager.ensure("alice", "live");
    await cp.manager.ensure("alice", "dev");
    const before = await cp.runtime.inspect("alice", "b");
    const [result] = await cp.releases.deploy(g2, ["alice"]);
    assert.equal(result?.ok, true);
    assert.deepEqual(result?.from, { slot: "b", generation: cp.g1 });
    assert.deepEqual(result?.to, { slot: "b", generation: g2 });
    assert.equal(cp.userStore.slot("alice", "b")?.generationId, g2);
    assert.equal(cp.userStore.slot("alice", "a")?.generationId, cp.g1, "live keeps its generation");
    const after = await cp.runtime.inspect("alice", "b");
    assert.notEqual(after?.id, before?.id, "dev's sandbox was replaced");
    assert.equal(cp.runtime.envOf("alice", "b").HYPERVISOR_GENERATION, String(g2));
    assert.equal(cp.manager.isRunning("alice", "b"), true);
    assert.equal(await cp.manager.ensure("alice", "live"), live, "live was not touched");
    assert.deepEqual([cp.runtime.calls.stop, cp.runtime.calls.remove], [1, 1]);
    assert.equal(cp.store.route("alice")?.version, 0, "a deploy changes no route");
  });

  it("refuses a bad generation, another runtime's and an unknown one, touching nothing", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    const bad = cp.addGeneration("bad");
    cp.generations.setState(bad, "bad");
    const other = cp.addGeneration("2", "process");
    await assert.rejects(cp.releases.deploy(bad, ["alice"]), refusal("conflict", /is marked bad/));
    await assert.rejects(cp.releases.deploy(other, ["alice"]), refusal("bad_request", /for the process runtime; this hypervisor runs fake/));
    await assert.rejects(cp.releases.deploy(9999, ["alice"]), refusal("not_found"));
    assert.equal(
      Object.values(cp.runtime.calls).reduce((a, b) => a + b),
      0,
    );
    assert.equal(cp.userStore.slot("alice", "b")?.generationId, cp.g1);
  });

  it("reports each user's outcome: an unknown user fails alone", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    const g2 = cp.addGeneration("2");
    const results = await cp.releases.deploy(g2, ["nobody", "alice"]);
    assert.deepEqual(
      results.map((r) => [r.user, r.ok, r.error?.code]),
      [
        ["nobody", false, "not_found"],
        ["alice", true, undefined],
      ],
    );
  });
});

describe("release controller: rollback", () => {
  it("goes warm when dev still runs the newest known-good generation: a route flip, no start", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    const g2 = cp.addGeneration("2");
    await liveOn(cp, "alice", g2);
    cp.generations.setState(cp.g1, "known-good");
    const calls = cp.runtime.calls;
    const [result] = await cp.releases.rollback(["alice"], undefined);
    assert.equal(result?.ok, true, JSON.stringify(result));
    assert.equal(result?.path, "warm");
    assert.deepEqual(result?.from, { slot: "b", generation: g2 });
    assert.deepEqual(result?.to, { slot: "a", generation: cp.g1 });
    assert.deepEqual([cp.runtime.calls.create, cp.runtime.calls.start], [calls.create, calls.start]);
    assert.deepEqual(cp.store.route("alice"), { user: "alice", live: "a", dev: "b", version: 2 });
  });

  it("goes cold when dev is stopped: starts it before the flip", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    await liveOn(cp, "alice", cp.addGeneration("2"));
    cp.generations.setState(cp.g1, "known-good");
    await cp.manager.stop("alice", "dev");
    const starts = cp.runtime.calls.start;
    const [result] = await cp.releases.rollback(["alice"], undefined);
    assert.equal(result?.path, "cold");
    assert.equal(cp.runtime.calls.start, starts + 1);
    assert.equal(cp.routing.generationOf("alice", "live"), cp.g1);
  });

  it("goes cold onto another generation: keeps serving the old live until the new one is healthy", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    const g2 = cp.addGeneration("2");
    await liveOn(cp, "alice", g2);
    await cp.releases.deploy(cp.addGeneration("3"), ["alice"]); // dev no longer holds g1
    cp.generations.setState(cp.g1, "known-good");
    const hold = cp.runtime.holdStart("alice", "a");
    const rollback = cp.releases.rollback(["alice"], undefined);
    await hold.reached;
    assert.equal(cp.userStore.slot("alice", "a")?.generationId, cp.g1, "dev was given the target generation");
    assert.equal(cp.routing.slotOf("alice", "live"), "b");
    assert.equal(cp.manager.isRunning("alice", "b"), true, "live keeps serving meanwhile");
    hold.release();
    const [result] = await rollback;
    assert.equal(result?.path, "cold");
    assert.deepEqual(result?.to, { slot: "a", generation: cp.g1 });
    assert.equal(cp.runtime.envOf("alice", "a").HYPERVISOR_GENERATION, String(cp.g1));
  });

  it("fails past the deadline with deadline_exceeded, and live stays even when the held start finishes later", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"], config: { rollbackDeadlineMs: 1000 } });
    const g2 = cp.addGeneration("2");
    await liveOn(cp, "alice", g2);
    await cp.releases.deploy(cp.addGeneration("3"), ["alice"]);
    cp.generations.setState(cp.g1, "known-good");
    const changes = recordRouteChanges(cp);
    stopClock(t);
    const hold = cp.runtime.holdStart("alice", "a");
    const rollback = track(cp.releases.rollback(["alice"], undefined));
    await hold.reached;
    t.mock.timers.tick(999);
    await settle();
    assert.equal(rollback.done(), false);
    t.mock.timers.tick(1);
    await settle();
    const [result] = await rollback.promise;
    assert.equal(result?.ok, false);
    assert.equal(result?.error?.code, "deadline_exceeded");
    assert.match(result?.error?.message ?? "", /live is unchanged/);

    hold.release();
    await quiet(cp, "alice");
    assert.equal(cp.manager.isRunning("alice", "a"), true, "the cold start did finish");
    assert.deepEqual(cp.store.route("alice"), { user: "alice", live: "b", dev: "a", version: 1 });
    assert.equal(cp.routing.generationOf("alice", "live"), g2);
    assert.equal(changes.length, 0);
  });

  it("does nothing once it has reported failure: a rollback that timed out in the queue leaves a later deploy's dev alone", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"], config: { rollbackDeadlineMs: 1000 } });
    const g2 = cp.addGeneration("2");
    await liveOn(cp, "alice", g2);
    cp.generations.setState(cp.g1, "known-good");
    const g3 = cp.addGeneration("3");
    stopClock(t);
    const hold = cp.runtime.holdStart("alice", "a");
    const deploy = cp.releases.deploy(g3, ["alice"]);
    await hold.reached;
    const rollback = track(cp.releases.rollback(["alice"], undefined));
    t.mock.timers.tick(1000);
    await settle();
    const [failed] = await rollback.promise;
    assert.equal(failed?.error?.code, "deadline_exceeded");
    hold.release();
    const [deployed] = await deploy;
    assert.equal(deployed?.ok, true);
    await quiet(cp, "alice");
    assert.equal(cp.routing.generationOf("alice", "dev"), g3, "dev keeps what the deploy put there");
    assert.equal(cp.routing.generationOf("alice", "live"), g2);
  });

  it("fails with no_known_good when no other known-good generation of this runtime exists", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    cp.generations.setState(cp.g1, "known-good"); // live's own generation does not count
    cp.generations.setState(cp.addGeneration("p", "process"), "known-good");
    const [result] = await cp.releases.rollback(["alice"], undefined);
    assert.equal(result?.error?.code, "no_known_good");
    assert.equal(cp.store.route("alice")?.version, 0);
  });

  it("refuses an explicit target that is bad, of another runtime, or already live", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    const bad = cp.addGeneration("bad");
    cp.generations.setState(bad, "bad");
    await assert.rejects(cp.releases.rollback(["alice"], bad), refusal("conflict", /is marked bad/));
    await assert.rejects(cp.releases.rollback(["alice"], cp.addGeneration("p", "process")), refusal("bad_request", /process runtime/));
    const [live] = await cp.releases.rollback(["alice"], cp.g1);
    assert.equal(live?.error?.code, "conflict");
    assert.match(live?.error?.message ?? "", /already live/);
    assert.equal(cp.store.route("alice")?.version, 0);
    assert.equal(
      Object.values(cp.runtime.calls).reduce((a, b) => a + b),
      0,
    );
  });
});

describe("known-good watch", () => {
  it("promotes a candidate that served live long enough and answers healthy", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"], config: { knownGoodAfterMs: 60_000 } });
    const g2 = cp.addGeneration("2");
    await liveOn(cp, "alice", g2);
    assert.deepEqual(await cp.knownGood.check(Date.now()), [], "not before knownGoodAfterMs");
    assert.deepEqual(await cp.knownGood.check(Date.now() + 60_000), [g2]);
    assert.equal(cp.generations.get(g2)?.state, "known-good");
    assert.equal(cp.generations.get(cp.g1)?.state, "candidate", "a generation that is not live is not judged");
    const [entry] = cp.audit.list({ limit: 10 });
    assert.deepEqual([entry?.action, entry?.target, entry?.details], ["generation.known-good", String(g2), { automatic: true, users: 1 }]);
  });

  it("does not promote it while its live sandbox is unhealthy, nor while none runs", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    const g2 = cp.addGeneration("2");
    await liveOn(cp, "alice", g2);
    const later = Date.now() + 60_000;
    cp.runtime.setHealthy("alice", "b", false);
    assert.deepEqual(await cp.knownGood.check(later), []);
    cp.runtime.setHealthy("alice", "b", true);
    await cp.manager.stop("alice", "live");
    assert.deepEqual(await cp.knownGood.check(later), [], "an idle-stopped sandbox proves nothing");
    assert.equal(cp.generations.get(g2)?.state, "candidate");
    assert.equal(cp.audit.list({ limit: 10 }).length, 0);
  });
});
