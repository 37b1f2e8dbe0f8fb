import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { controlPlane, refusal } from "../../test/helpers/control-plane.js";

describe("removing a user on the fake runtime", () => {
  it("undoes what it did when the runtime fails: the user stays, enabled again, its sessions ended", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    await cp.manager.ensure("alice", "live");
    cp.sessions.create("alice", "full");
    cp.runtime.setAvailable(false);
    await assert.rejects(cp.userRemoval.remove("alice", { purge: false }), refusal("runtime_unavailable"));
    assert.equal(cp.users.hasUser("alice"), true);
    assert.equal(cp.users.record("alice").disabledAt, null, "enabled again, as it was");
    assert.equal(cp.sessions.count("alice"), 0, "no session outlives a removal that was asked for");
    assert.deepEqual(cp.routing.route("alice"), { live: "a", dev: "b", version: 0 });
  });

  it("keeps the data and the name reserved without purge, until purge deletes the data and frees the name", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    await cp.manager.ensure("alice", "live");
    cp.runtime.data("alice", "a").set("notes", "alice's");
    assert.deepEqual(await cp.userRemoval.remove("alice", { purge: false }), { name: "alice", removed: true, purged: false });
    assert.throws(() => cp.routing.route("alice"), refusal("not_found"), "the route is gone from the table the proxy reads");
    const create = await cp.users.prepareUser();
    assert.throws(() => create("alice"), refusal("conflict", /reserved until an operator purges that data/));
    assert.equal(cp.runtime.data("alice", "a").get("notes"), "alice's");

    await assert.rejects(cp.userRemoval.purge("bob"), refusal("not_found"));
    assert.deepEqual(await cp.userRemoval.purge("alice"), { name: "alice", purged: true });
    assert.throws(() => cp.runtime.data("alice", "a"), refusal("not_found"));
    create("alice");
    await cp.manager.ensure("alice", "live");
    assert.equal(cp.runtime.data("alice", "a").get("notes"), undefined, "the new alice starts empty");
  });
});

describe("moving a user without hosts", () => {
  it("is refused: the process and fake runtimes have one host", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"] });
    await assert.rejects(cp.userMoves.move("alice", "elsewhere"), refusal("conflict", /need HYPERVISOR_RUNTIME=podman/));
    assert.throws(() => cp.userMoves.drain("elsewhere"), refusal("conflict"));
  });
});
