import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { createPublicApp } from "../../hypervisor/public-app.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";

/**
 * What strangers can do to someone else's account from the outside: lock it, break its
 * sign-in, or learn that it exists. None of it should work.
 */
const ORIGIN = "http://localhost:8080";

describe("strangers and other people's accounts", () => {
  let t: TestDaemon;
  const client = (address?: string) => new PublicClient(t.publicUrl, ORIGIN, address);

  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN } });
  });
  after(async () => {
    await t.close();
  });

  it("lets the owner's right recovery code through, however many strangers failed before", async () => {
    const user = testUser("rita");
    const owner = client();
    const registered = await owner.register(user, new SoftwareAuthenticator(ORIGIN));
    assert.equal(registered.status, 201);
    await owner.logout();
    const strangers: number[] = [];
    for (let i = 0; i < 6; i++) strangers.push((await client().recover(user, "aaaa-bbbb-cccc")).status);
    const recovered = await owner.recover(user, registered.body.recoveryCodes[0]);
    assert.equal(recovered.status, 200, `after strangers got ${strangers.join(" ")}: ${recovered.text}`);
    assert.equal(recovered.body.scope, "recovery");
  });

  it("keeps a victim's pending sign-in through a flood of 10,050 challenges from other addresses", async () => {
    const user = testUser("vic");
    const key = new SoftwareAuthenticator(ORIGIN);
    const victim = client();
    assert.equal((await victim.register(user, key)).status, 201);
    await victim.logout();
    const options = await victim.post("/auth/login/options", { username: user });
    assert.equal(options.status, 200);

    // Straight into the public app, from behind the trusted front: 20 requests (the per-address
    // limit) from each of 503 addresses.
    const app = createPublicApp(t.daemon.services);
    const env = { incoming: { socket: { remoteAddress: "127.0.0.1" } } };
    // app.request may answer synchronously; async makes every answer a promise for Promise.all.
    const flood = async (i: number) =>
      app.request(
        "/auth/login/options",
        { method: "POST", headers: { origin: ORIGIN, "content-type": "application/json", "x-forwarded-for": `10.77.${i >> 8}.${i & 255}` }, body: "{}" },
        env,
      );
    let issued = 0;
    for (let i = 0; issued < 10_050; i++) {
      const batch = await Promise.all(Array.from({ length: 20 }, () => flood(i)));
      issued += batch.filter((r) => r.status === 200).length;
    }

    const signedIn = await victim.post("/auth/login/verify", { credential: key.get(options.body.options) });
    assert.equal(signedIn.status, 200, signedIn.text);
    assert.equal(signedIn.body.user, user);
  });

  it("offers the same kind of credential list for a name with an account, one without, and one never seen", async () => {
    const [owner, provisioned, unknown] = [testUser("una"), testUser("ursula"), testUser("nobody")];
    assert.equal((await client().register(owner, new SoftwareAuthenticator(ORIGIN))).status, 201);
    assert.equal((await t.operator.post("/users", { name: provisioned })).status, 201, "a user with no passkey account");
    const optionsFor = async (username: string) => {
      const res = await client().post("/auth/login/options", { username });
      assert.equal(res.status, 200, res.text);
      return res.body.options as { allowCredentials?: { id: string; type: string; transports?: string[] }[] } & Record<string, unknown>;
    };
    const real = await optionsFor(owner);
    for (const name of [provisioned, unknown]) {
      const decoy = await optionsFor(name);
      assert.deepEqual(Object.keys(decoy).sort(), Object.keys(real).sort(), `${name}: the same members`);
      assert.ok(decoy.allowCredentials && decoy.allowCredentials.length >= 1 && decoy.allowCredentials.length <= 3, `${name}: one to three credentials`);
      for (const c of decoy.allowCredentials) {
        assert.deepEqual(Object.keys(c).sort(), Object.keys(real.allowCredentials![0]!).sort(), `${name}: each credential has the same members`);
        assert.equal(c.type, "public-key");
        assert.match(c.id, /^[A-Za-z0-9_-]{22,86}$/, "a credential ID of a real authenticator's length");
        assert.ok(Array.isArray(c.transports) && c.transports.length > 0);
      }
      assert.deepEqual((await optionsFor(name)).allowCredentials, decoy.allowCredentials, `${name}: the same IDs on every call`);
    }
    assert.notDeepEqual((await optionsFor(provisioned)).allowCredentials, (await optionsFor(unknown)).allowCredentials, "each name its own");
  });

  it("takes as long to refuse a recovery code for an unknown name as for a name with ten codes", async (ctx) => {
    const owner = testUser("tess");
    assert.equal((await client().register(owner, new SoftwareAuthenticator(ORIGIN))).status, 201);
    const unknown = testUser("tnobody");
    const timed = async (username: string) => {
      const began = performance.now();
      const res = await client().recover(username, "aaaa-bbbb-cccc");
      assert.equal(res.status, 401, res.text);
      return { ms: performance.now() - began, body: res.body as unknown as { error: Record<string, unknown> } };
    };
    await timed(unknown); // warm both paths once
    await timed(owner);
    const known: number[] = [];
    const stranger: number[] = [];
    for (let i = 0; i < 7; i++) {
      const [a, b] = [await timed(owner), await timed(unknown)];
      known.push(a.ms);
      stranger.push(b.ms);
      assert.deepEqual({ ...a.body.error, requestId: "-" }, { ...b.body.error, requestId: "-" }, "the same answer");
    }
    const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[xs.length >> 1]!;
    const ratio = Math.max(median(known), median(stranger)) / Math.min(median(known), median(stranger));
    ctx.diagnostic(`median ${median(known).toFixed(1)} ms with ten codes, ${median(stranger).toFixed(1)} ms unknown`);
    assert.ok(ratio < 1.5, `median ${median(known).toFixed(1)} ms with ten codes, ${median(stranger).toFixed(1)} ms unknown (ratio ${ratio.toFixed(2)})`);
  });
});
