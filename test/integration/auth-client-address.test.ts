import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { PublicClient } from "../helpers/authenticator.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";

const ORIGIN = "http://localhost:8080";

/** The newest refused sign-in's audit source: the client address the daemon believed. */
function lastLoginSource(t: TestDaemon): string | null | undefined {
  return t.daemon.services.audit.list({ limit: 50 }).find((e) => e.action === "auth.login")?.source;
}

/** A sign-in answered with a credential nobody registered: refused and audited with its source. */
async function failLogin(client: PublicClient): Promise<number> {
  const options = await client.post("/auth/login/options", {});
  const clientDataJSON = Buffer.from(JSON.stringify({ type: "webauthn.get", challenge: options.body.options.challenge, origin: ORIGIN })).toString("base64url");
  const id = Buffer.alloc(16, 9).toString("base64url");
  const res = await client.post("/auth/login/verify", {
    credential: { id, rawId: id, type: "public-key", response: { clientDataJSON, authenticatorData: "AA", signature: "AA" }, clientExtensionResults: {} },
  });
  return res.status;
}

describe("client address (HYPERVISOR_TRUSTED_PROXIES)", () => {
  describe("with no trusted proxies (the default)", () => {
    let t: TestDaemon;
    before(async () => {
      t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, HYPERVISOR_TRUSTED_PROXIES: "" } });
    });
    after(async () => {
      await t.close();
    });

    it("audits the socket peer, not the address the client claims", async () => {
      assert.equal(await failLogin(new PublicClient(t.publicUrl, ORIGIN, "8.8.8.8")), 401);
      assert.equal(lastLoginSource(t), "127.0.0.1");
    });

    it("ignores X-Forwarded-For: a client cannot pick a fresh rate-limit bucket per request", async () => {
      const statuses: number[] = [];
      for (let i = 0; i < 30; i++) statuses.push((await new PublicClient(t.publicUrl, ORIGIN, `198.51.100.${i + 1}`).post("/auth/login/options", {})).status);
      // The test before this one spent two of the peer's 20 requests.
      assert.ok(statuses.filter((s) => s === 200).length <= 20, `the one peer gets one per-address allowance: ${statuses.join(" ")}`);
      assert.deepEqual(statuses.slice(20), Array<number>(10).fill(429));
    });
  });

  describe("behind trusted proxies", () => {
    let t: TestDaemon;
    before(async () => {
      t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, HYPERVISOR_TRUSTED_PROXIES: "127.0.0.1/32, 10.0.0.0/8" } });
    });
    after(async () => {
      await t.close();
    });

    it("reads X-Forwarded-For from the right past trusted hops only", async () => {
      assert.equal(await failLogin(new PublicClient(t.publicUrl, ORIGIN, "8.8.8.8, 10.9.9.9")), 401);
      assert.equal(lastLoginSource(t), "8.8.8.8", "the front at 10.9.9.9 vouches for 8.8.8.8");
      await failLogin(new PublicClient(t.publicUrl, ORIGIN, "1.1.1.1, 203.0.113.4, 10.9.9.9"));
      assert.equal(lastLoginSource(t), "203.0.113.4", "what the client wrote itself, left of an untrusted hop, is ignored");
    });

    it("rate-limits an IPv6 client by its /64, however many addresses it uses there", async () => {
      const statuses: number[] = [];
      for (let i = 1; i <= 25; i++)
        statuses.push((await new PublicClient(t.publicUrl, ORIGIN, `2001:db8:1:2::${i.toString(16)}`).post("/auth/login/options", {})).status);
      assert.equal(statuses.filter((s) => s === 200).length, 20, statuses.join(" "));
      assert.equal(
        (await new PublicClient(t.publicUrl, ORIGIN, "2001:db8:1:3::1").post("/auth/login/options", {})).status,
        200,
        "the next /64 is another client",
      );
    });
  });
});
