// A removed user's data is never handed to a new account: removing a user without its data keeps
// the name reserved (registration and the operator's POST /users refuse it) until the operator
// purges the data; `purge` then deletes it and frees the name.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { FakeRuntime } from "../../hypervisor/runtime/fake-runtime.js";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { refusal } from "../helpers/control-plane.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { ORIGIN } from "../helpers/public-daemon.js";
import { testUser } from "../helpers/run-id.js";

describe("removing a user keeps its name while its data is kept", () => {
  const runtime = new FakeRuntime();
  let t: TestDaemon;
  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN }, runtime });
  });
  after(async () => {
    await t.close();
  });
  const client = () => new PublicClient(t.publicUrl, ORIGIN);

  it("refuses the name to registration and to the operator until purged, and a new account never sees the old data", async () => {
    const dave = testUser("dave");
    assert.equal((await t.operator.post("/users", { name: dave })).status, 201);
    await t.daemon.services.manager.ensure(dave, "live");
    runtime.data(dave, "a").set("tasks.json", "the old user's task history");
    assert.equal((await t.operator.send("DELETE", `/users/${dave}`)).status, 200);

    const again = await t.operator.post("/users", { name: dave });
    assert.equal(again.status, 409, JSON.stringify(again.body));
    assert.match(again.body.error.message, new RegExp(`reserved until an operator purges that data \\(hypervisorctl users purge ${dave}\\)`));
    const options = await client().post("/auth/register/options", { username: dave });
    assert.equal(options.status, 409, options.text);
    assert.equal(options.body.error.code, "conflict");
    assert.equal((await client().register(dave, new SoftwareAuthenticator(ORIGIN))).status, 409);
    assert.equal(t.daemon.services.users.hasUser(dave), false);
    assert.equal(runtime.data(dave, "a").get("tasks.json"), "the old user's task history", "the kept data is still there");

    const purged = await t.operator.post(`/users/${dave}/purge?confirm=true`);
    assert.equal(purged.status, 200, JSON.stringify(purged.body));
    assert.deepEqual(purged.body, { name: dave, purged: true });
    assert.throws(() => runtime.data(dave, "a"), refusal("not_found"));
    assert.equal((await t.operator.post(`/users/${dave}/purge?confirm=true`)).status, 404, "nothing left to purge");
    assert.deepEqual(
      t.daemon.services.audit.list({ limit: 2 }).map((e) => [e.action, e.target, e.outcome]),
      [
        ["user.purge", dave, "error"],
        ["user.purge", dave, "ok"],
      ],
    );

    const registered = await client().register(dave, new SoftwareAuthenticator(ORIGIN));
    assert.equal(registered.status, 201, registered.text);
    await t.daemon.services.manager.ensure(dave, "live");
    assert.equal(runtime.data(dave, "a").get("tasks.json"), undefined, "the new account starts empty");
  });

  it("frees the name at once when removed with --purge, and refuses to purge a user that exists", async () => {
    const erin = testUser("erin");
    assert.equal((await t.operator.post("/users", { name: erin })).status, 201);
    const existing = await t.operator.post(`/users/${erin}/purge?confirm=true`);
    assert.equal(existing.status, 409, JSON.stringify(existing.body));
    assert.match(existing.body.error.message, /remove it with its data/);
    assert.equal((await t.operator.send("DELETE", `/users/${erin}?purge=true&confirm=true`)).status, 200);
    assert.equal((await t.operator.post("/users", { name: erin })).status, 201);
  });
});
