import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";

const ORIGIN = "http://localhost:8080";
const sandbox = referenceSandboxCommand();

/** DESIGN §2a: a user's snapshots and data actions on the account page, their own only, each behind step-up. */
describe("the account page's data: own snapshots only, every change behind step-up", () => {
  let t: TestDaemon;
  const alice = testUser("data-alice");
  const mallory = testUser("data-mallory");
  const keys = { alice: new SoftwareAuthenticator(ORIGIN), mallory: new SoftwareAuthenticator(ORIGIN) };
  let a: PublicClient;
  let m: PublicClient;
  let snapshot: string;

  const bump = async (user: string) => {
    const { endpoint } = await t.daemon.services.manager.ensure(user, "live");
    return ((await (await fetch(`${baseUrl(endpoint)}/counter`, { method: "POST" })).json()) as { count: number }).count;
  };
  const live = async (user: string) => {
    const { endpoint, generationId } = await t.daemon.services.manager.ensure(user, "live");
    return { count: ((await (await fetch(`${baseUrl(endpoint)}/counter`)).json()) as { count: number }).count, generation: generationId };
  };

  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN } });
    a = new PublicClient(t.publicUrl, ORIGIN);
    m = new PublicClient(t.publicUrl, ORIGIN);
    assert.equal((await a.register(alice, keys.alice)).status, 201);
    assert.equal((await m.register(mallory, keys.mallory)).status, 201);
    assert.equal(await bump(alice), 1);
    const taken = await t.operator.post(`/users/${alice}/snapshots`, { slot: "live" });
    assert.equal(taken.status, 201);
    snapshot = taken.body.snapshot.id;
    await bump(mallory);
  });
  after(async () => {
    for (const user of [alice, mallory]) for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t?.close();
  });

  it("never lists, exports, restores or deletes another user's snapshot through a user's session", async () => {
    const theirs = `/_hv/snapshots/${alice}`;
    assert.equal((await m.get(theirs)).status, 403);
    assert.equal((await m.get(`${theirs}/${snapshot}/export`)).status, 403);
    const restoreStepUp = await m.stepUp(keys.mallory, "snapshot.restore");
    assert.equal((await m.post(`${theirs}/${snapshot}/restore`, { stepUp: restoreStepUp })).status, 403);
    const deleteStepUp = await m.stepUp(keys.mallory, "snapshot.delete");
    assert.equal((await m.delete(`${theirs}/${snapshot}`, { stepUp: deleteStepUp })).status, 403);
    // Under the user's own name, another user's id is simply not there.
    const own = `/_hv/snapshots/${mallory}/${snapshot}`;
    assert.deepEqual((await m.get(`/_hv/snapshots/${mallory}`)).body.snapshots, []);
    assert.equal((await m.get(`${own}/export`)).status, 404);
    assert.equal((await m.post(`${own}/restore`, { stepUp: await m.stepUp(keys.mallory, "snapshot.restore") })).status, 404);
    assert.equal((await m.delete(own, { stepUp: await m.stepUp(keys.mallory, "snapshot.delete") })).status, 404);
    assert.equal((await m.post(`/_hv/data/${alice}/promote`, { stepUp: await m.stepUp(keys.mallory, "data.promote") })).status, 403);
    // Alice's snapshot is still there, whole.
    assert.ok((await a.get(theirs)).body.snapshots.some((s: { id: string }) => s.id === snapshot));
    // Without a session: nothing.
    assert.equal((await new PublicClient(t.publicUrl, ORIGIN).get(theirs)).status, 401);
  });

  it("refuses a restore without a step-up, or with one made for another action, and restores with the right one", async () => {
    assert.equal(await bump(alice), 2);
    const path = `/_hv/snapshots/${alice}/${snapshot}/restore`;
    const none = await a.post(path, {});
    assert.equal(none.status, 403);
    assert.equal(none.body.error.code, "step_up_required");
    const wrong = await a.post(path, { stepUp: await a.stepUp(keys.alice, "snapshot.delete") });
    assert.equal(wrong.body.error.code, "step_up_required");
    assert.equal((await live(alice)).count, 2, "nothing restored");
    const done = await a.post(path, { stepUp: await a.stepUp(keys.alice, "snapshot.restore") });
    assert.equal(done.status, 200, done.text);
    assert.equal((await live(alice)).count, 1);
    assert.equal(done.body.kept.reason, "pre-restore");
    const audit = t.daemon.services.audit.list({ limit: 1000 }).filter((e) => e.action === "snapshot.restore" && e.actor === `user:${alice}`);
    assert.deepEqual(audit.map((e) => e.outcome).sort(), ["ok", "refused", "refused"]);
  });

  it("shows the generations and snapshots, and promotes from the page with a step-up, keeping live's data", async () => {
    const page = await a.get("/_hv/account");
    assert.equal(page.status, 200);
    assert.match(page.text, /Your data/);
    assert.match(page.text, new RegExp(`data-snapshot="${snapshot}"`));
    assert.match(page.text, /Promote dev to live/);
    assert.match(page.text, /live&#39;s own data|live's own data/);

    const g2 = (
      await t.operator.post("/generations", {
        command: [...sandbox.command.filter((x) => !x.startsWith("--version=")), "--version=2"],
        version: "2",
      })
    ).body.generation.id as number;
    assert.equal((await t.operator.post("/deploy", { generation: g2, users: [alice] })).status, 200);
    assert.equal((await a.post(`/_hv/data/${alice}/promote`, {})).body.error.code, "step_up_required");
    const promoted = await a.post(`/_hv/data/${alice}/promote`, { stepUp: await a.stepUp(keys.alice, "data.promote") });
    assert.equal(promoted.status, 200, promoted.text);
    assert.equal(promoted.body.result.to.generation, g2);
    assert.deepEqual(await live(alice), { count: 1, generation: g2 });
  });
});
