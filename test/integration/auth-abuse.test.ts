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
    const flood = (i: number) =>
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
});
