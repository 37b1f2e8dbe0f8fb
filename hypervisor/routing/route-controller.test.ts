import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { controlPlane, refusal, settle, track } from "../../test/helpers/control-plane.js";
import { RouteStore } from "./route-store.js";

describe("route controller", () => {
  it("loads a user registered since from SQLite, and does not remember unknown names", async (t) => {
    const { routing, userStore, g1 } = await controlPlane(t, { users: ["alice"] });
    assert.deepEqual(routing.route("alice"), { live: "a", dev: "b", version: 0 });
    assert.throws(() => routing.route("bob"), refusal("not_found"));
    userStore.createUser("bob", g1);
    assert.equal(routing.slotOf("bob", "dev"), "b", "a miss was not cached");
  });

  it("refuses a second user of the same name", async (t) => {
    const { users } = await controlPlane(t, { users: ["alice"] });
    const create = await users.prepareUser();
    assert.throws(() => create("alice"), refusal("conflict"));
  });

  it("flips the route in SQLite and in the table, and refuses a flip based on a stale read, leaving the table as it was", async (t) => {
    const { routing, store } = await controlPlane(t, { users: ["alice"] });
    const { replaced, installed } = await routing.flip("alice");
    assert.deepEqual(
      [replaced, installed],
      [
        { live: "a", dev: "b", version: 0 },
        { live: "b", dev: "a", version: 1 },
      ],
    );
    assert.deepEqual(store.route("alice"), { user: "alice", live: "b", dev: "a", version: 1 });

    store.flip("alice", 1); // a write the controller did not make
    await assert.rejects(routing.flip("alice"), refusal("conflict", /changed meanwhile/));
    assert.deepEqual(routing.route("alice"), installed);
    assert.equal(store.route("alice")?.version, 2);
  });

  it("commits flips asked for together in one transaction, and a refused one fails alone with nothing written", async (t) => {
    const { routing, store } = await controlPlane(t, { users: ["alice", "bob", "carol"] });
    const transactions = t.mock.method(RouteStore.prototype, "transaction");
    const heard: string[] = [];
    routing.onRouteChange((user) => heard.push(user));
    const results = await Promise.allSettled([
      routing.flip("alice"),
      routing.flip("bob", () => {
        throw new Error("past the deadline");
      }),
      routing.flip("carol"),
    ]);
    assert.equal(transactions.mock.callCount(), 1);
    assert.deepEqual(
      results.map((r) => r.status),
      ["fulfilled", "rejected", "fulfilled"],
    );
    assert.deepEqual(
      ["alice", "bob", "carol"].map((u) => [store.route(u)?.live, routing.route(u).live]),
      [
        ["b", "b"],
        ["a", "a"],
        ["b", "b"],
      ],
    );
    assert.deepEqual(heard, ["alice", "carol"]);
  });

  it("installs none of a batch whose commit fails", async (t) => {
    const { routing } = await controlPlane(t, { users: ["alice", "bob"] });
    t.mock.method(RouteStore.prototype, "transaction", () => {
      throw new Error("disk I/O error");
    });
    const results = await Promise.allSettled([routing.flip("alice"), routing.flip("bob")]);
    assert.deepEqual(
      results.map((r) => r.status),
      ["rejected", "rejected"],
    );
    assert.deepEqual([routing.route("alice").live, routing.route("bob").live], ["a", "a"]);
  });

  it("reports the generation each role runs, following flips", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    const g2 = cp.addGeneration("2");
    cp.users.setSlotGeneration("alice", "b", g2);
    assert.deepEqual([cp.routing.generationOf("alice", "live"), cp.routing.generationOf("alice", "dev")], [cp.g1, g2]);
    await cp.routing.flip("alice");
    assert.deepEqual([cp.routing.generationOf("alice", "live"), cp.routing.generationOf("alice", "dev")], [g2, cp.g1]);
    assert.deepEqual(
      cp.users.assignments().map((p) => [p.slot, p.role, p.generationId]),
      [
        ["a", "dev", cp.g1],
        ["b", "live", g2],
      ],
    );
  });

  it("resolves named users, once each, and names every unknown one; no names means everyone", async (t) => {
    const { users } = await controlPlane(t, { users: ["bob", "alice"] });
    assert.deepEqual(users.resolveUsers(undefined), ["alice", "bob"]);
    assert.deepEqual(users.resolveUsers(["bob", "bob"]), ["bob"]);
    assert.throws(() => users.resolveUsers(["alice", "x", "y"]), { ...refusal("not_found", /no user x, y/), details: { users: ["x", "y"] } });
  });

  it("runs one user's work in order, also after a failure, and other users' work alongside", async (t) => {
    const { users } = await controlPlane(t, { users: ["alice", "bob"] });
    let finishFirst!: () => void;
    const order: string[] = [];
    const first = users.withUserLock("alice", async () => {
      order.push("first");
      await new Promise<void>((resolve) => (finishFirst = resolve));
      throw new Error("first failed");
    });
    const second = track(users.withUserLock("alice", async () => order.push("second")));
    assert.equal(await users.withUserLock("bob", async () => "bob ran"), "bob ran", "bob does not wait for alice");
    await settle();
    assert.deepEqual(order, ["first"]);
    assert.equal(second.done(), false);
    finishFirst();
    await assert.rejects(first, /first failed/);
    await second.promise;
    assert.deepEqual(order, ["first", "second"]);
  });
});
