import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AuthService, STEP_UP_TTL_MS } from "../../hypervisor/auth/auth-service.js";
import { InviteStore } from "../../hypervisor/auth/invite-store.js";
import { SessionStore } from "../../hypervisor/auth/session-store.js";
import { openDatabase } from "../../hypervisor/db/database.js";
import { HypervisorError } from "../../hypervisor/errors.js";
import { PublicClient, SoftwareAuthenticator, testAddress, type PublicResponse } from "../helpers/authenticator.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";

const ORIGIN = "http://localhost:8080";

function refusedForStepUp(res: PublicResponse, what: string): void {
  assert.equal(res.status, 403, `${what}: ${res.text}`);
  assert.equal(res.body.error.code, "step_up_required", what);
}

/** DESIGN §5: adding or removing a passkey and making new recovery codes need a fresh assertion made for that action. */
describe("step-up for credential changes", () => {
  let t: TestDaemon;
  const client = () => new PublicClient(t.publicUrl, ORIGIN);
  const passkeyCount = (user: string) => (t.daemon.services.db.prepare("SELECT count(*) AS n FROM passkeys WHERE user = ?").get(user) as { n: number }).n;
  const codeHashes = (user: string) => JSON.stringify(t.daemon.services.db.prepare("SELECT hash FROM recovery_codes WHERE user = ? ORDER BY hash").all(user));

  /** A user with two passkeys, signed in on `main`. */
  async function account(name: string) {
    const user = testUser(name);
    const [first, second] = [new SoftwareAuthenticator(ORIGIN), new SoftwareAuthenticator(ORIGIN)];
    const main = client();
    assert.equal((await main.register(user, first)).status, 201);
    assert.equal((await main.addPasskey(second, { confirmWith: first })).status, 201);
    return { user, first, second, main, secondId: second.credentials[0]!.id.toString("base64url") };
  }

  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN } });
  });
  after(async () => {
    await t.close();
  });

  it("refuses each change without a step-up with 403 step_up_required, changes nothing, and audits it", async () => {
    const { user, main, secondId } = await account("su-none");
    const codes = codeHashes(user);

    refusedForStepUp(await main.addPasskey(new SoftwareAuthenticator(ORIGIN)), "add a passkey");
    refusedForStepUp(await main.delete(`/auth/passkeys/${secondId}`), "remove a passkey, no body");
    refusedForStepUp(await main.delete(`/auth/passkeys/${secondId}`, {}), "remove a passkey, no step-up in the body");
    refusedForStepUp(await main.post("/auth/recovery-codes", {}), "new recovery codes");

    assert.equal(passkeyCount(user), 2);
    assert.equal(codeHashes(user), codes, "the recovery codes are the same");
    for (const action of ["auth.passkey.add", "auth.passkey.remove", "auth.recovery-codes.regenerate"]) {
      const [newest] = t.daemon.services.audit.list({ limit: 1000 }).filter((e) => e.action === action && e.target === user && e.outcome === "refused");
      assert.equal(newest?.details?.code, "step_up_required", `${action} refusal is audited`);
    }
  });

  it("refuses a step-up made for another action, by another session, with a foreign passkey, replayed or forged", async () => {
    const { user, first, second, main, secondId } = await account("su-wrong");
    const codes = codeHashes(user);

    const forRemoval = await main.stepUp(first, "passkey.remove");
    const wrongAction = await main.post("/auth/recovery-codes", { stepUp: forRemoval });
    refusedForStepUp(wrongAction, "a step-up made for passkey.remove");
    assert.match(wrongAction.body.error.message, /passkey\.remove/);

    const elsewhere = client();
    assert.equal((await elsewhere.login(second)).status, 200);
    const otherSession = await elsewhere.stepUp(second, "recovery-codes.regenerate");
    refusedForStepUp(await main.post("/auth/recovery-codes", { stepUp: otherSession }), "a step-up made by the user's other session");

    const stranger = new SoftwareAuthenticator(ORIGIN);
    assert.equal((await client().register(testUser("su-stranger"), stranger)).status, 201);
    const options = await main.post("/auth/step-up/options", { action: "passkey.remove" });
    assert.deepEqual(
      options.body.options.allowCredentials.map((c: { id: string }) => c.id).sort(),
      [first, second].map((a) => a.credentials[0]!.id.toString("base64url")).sort(),
      "only the user's own passkeys are asked for",
    );
    const foreign = stranger.get({ ...options.body.options, allowCredentials: [] });
    refusedForStepUp(await main.delete(`/auth/passkeys/${secondId}`, { stepUp: foreign }), "another user's passkey");

    for (const tamper of [{ badSignature: true }, { userVerified: false }, { origin: "http://localhost:9999" }]) {
      const forged = await main.stepUp(first, "passkey.remove", tamper);
      refusedForStepUp(await main.delete(`/auth/passkeys/${secondId}`, { stepUp: forged }), JSON.stringify(tamper));
    }

    // A login assertion is no step-up, and a step-up signs nobody in. (A new address: this test
    // makes more auth requests than one address may in a minute.)
    main.address = testAddress();
    const loginOptions = await main.post("/auth/login/options", {});
    refusedForStepUp(await main.post("/auth/recovery-codes", { stepUp: first.get(loginOptions.body.options) }), "a login assertion");
    const stepUpAsLogin = await client().post("/auth/login/verify", { credential: await main.stepUp(first, "passkey.add") });
    assert.equal(stepUpAsLogin.status, 401);

    const good = await main.stepUp(first, "recovery-codes.regenerate");
    assert.equal((await main.post("/auth/recovery-codes", { stepUp: good })).status, 200);
    refusedForStepUp(await main.post("/auth/recovery-codes", { stepUp: good }), "the same step-up again");
    assert.notEqual(codeHashes(user), codes);
    assert.equal(passkeyCount(user), 2, "no passkey was removed by any of it");
  });

  it("lets each change through with a fresh step-up made for it", async () => {
    const { user, first, main, secondId } = await account("su-ok");
    assert.equal(passkeyCount(user), 2, "adding with a step-up worked");
    const fresh = await main.regenerateRecoveryCodes(first);
    assert.equal(fresh.status, 200, fresh.text);
    assert.equal(fresh.body.recoveryCodes.length, 10);
    const removed = await main.removePasskey(secondId, first);
    assert.equal(removed.status, 200, removed.text);
    assert.equal(passkeyCount(user), 1);
  });

  it("gives a recovery session no step-up, but lets it enrol its new passkey without one", async () => {
    const user = testUser("su-rec");
    const b = client();
    const reg = await b.register(user, new SoftwareAuthenticator(ORIGIN));
    await b.logout();
    assert.equal((await b.recover(user, reg.body.recoveryCodes[0]!)).status, 200);
    assert.equal((await b.post("/auth/step-up/options", { action: "passkey.add" })).status, 401);
    const enrolled = await b.addPasskey(new SoftwareAuthenticator(ORIGIN));
    assert.equal(enrolled.status, 201, enrolled.text);
    refusedForStepUp(await b.addPasskey(new SoftwareAuthenticator(ORIGIN)), "a second passkey, now from the full session");
  });
});

describe("step-up freshness", () => {
  it(`refuses a step-up answered more than ${STEP_UP_TTL_MS / 1000} s after it was asked for`, async () => {
    const dir = tempDir();
    const db = openDatabase(join(dir.path, "hypervisor.db"));
    let clock = Date.now();
    try {
      const sessions = new SessionStore(db, { now: () => clock });
      const auth = new AuthService({
        db,
        config: { publicOrigin: new URL(ORIGIN), rpId: "localhost", registration: "open" },
        users: {
          hasUser: () => false,
          removedUser: () => undefined,
          prepareUser: async () => (name: string) => {
            db.prepare("INSERT INTO users (name, created_at) VALUES (?, 0)").run(name);
          },
        },
        sessions,
        invites: new InviteStore(db),
        now: () => clock,
      });
      const key = new SoftwareAuthenticator(ORIGIN);
      const { session } = await auth.register(key.create(await auth.registrationOptions("frank", undefined, "192.0.2.1")));
      const late = key.get(await auth.stepUpOptions(session.session, "recovery-codes.regenerate", "192.0.2.1"));
      clock += STEP_UP_TTL_MS;
      await assert.rejects(auth.regenerateRecoveryCodes(session.session, late), (e: unknown) => e instanceof HypervisorError && e.code === "step_up_required");
      const inTime = key.get(await auth.stepUpOptions(session.session, "recovery-codes.regenerate", "192.0.2.1"));
      clock += STEP_UP_TTL_MS - 1000;
      assert.equal((await auth.regenerateRecoveryCodes(session.session, inTime)).length, 10);
    } finally {
      db.close();
      dir.remove();
    }
  });
});
