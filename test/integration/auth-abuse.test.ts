import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
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
});
