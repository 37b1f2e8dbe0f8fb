import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { PublicClient, SoftwareAuthenticator, type PublicResponse } from "../helpers/authenticator.js";
import { daemonForSuite, ORIGIN } from "../helpers/public-daemon.js";
import { testUser } from "../helpers/run-id.js";

const TABLES = ["users", "accounts", "passkeys", "recovery_codes", "sessions", "invites"];
const b64 = (s: string | Buffer) => Buffer.from(s).toString("base64url");

/** A credential that passes the schema but whose contents are nonsense. */
function junkRegistration(clientData: string = b64("not json")) {
  return {
    id: "AAAA",
    rawId: "AAAA",
    type: "public-key",
    response: { clientDataJSON: clientData, attestationObject: b64("garbage") },
    clientExtensionResults: {},
  };
}
function junkAssertion(clientData: string = b64("{}"), id = "AAAA") {
  return {
    id,
    rawId: id,
    type: "public-key",
    response: { clientDataJSON: clientData, authenticatorData: b64("x"), signature: b64("y") },
    clientExtensionResults: {},
  };
}

describe("bad input on every auth route", () => {
  const { t, client: freshClient } = daemonForSuite();
  let signedIn: PublicClient;
  const passkey = new SoftwareAuthenticator(ORIGIN);
  let counts: Record<string, number>;
  const snapshot = () =>
    Object.fromEntries(TABLES.map((table) => [table, (t().daemon.services.db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n]));

  before(async () => {
    signedIn = freshClient();
    assert.equal((await signedIn.register(testUser("input"), passkey)).status, 201);
    counts = snapshot();
  });

  /** Each request from a fresh address, so the per-address limit does not hide the answer. */
  const send = (method: string, path: string, raw: string | Buffer | undefined, headers: Record<string, string> = {}, session = false) => {
    const client = freshClient();
    if (session) client.cookie = signedIn.cookie;
    return client.send(method, path, raw, { "content-type": "application/json", ...headers });
  };

  function assertClientError(res: PublicResponse, what: string, allowed = [400, 401, 403, 404, 409, 413, 415, 429]) {
    assert.ok(allowed.includes(res.status), `${what}: got ${res.status} ${res.text}`);
    assert.equal(typeof res.body?.error?.code, "string", `${what}: error body ${res.text}`);
    assert.equal(typeof res.body.error.message, "string");
    assert.ok(res.body.error.requestId, `${what}: request id`);
    assert.match(String(res.headers["content-type"]), /application\/json/);
  }

  const routes: { method: string; path: string; session: boolean; bodies: unknown[] }[] = [
    {
      method: "POST",
      path: "/auth/register/options",
      session: false,
      bodies: [
        {},
        { username: 42 },
        { username: "" },
        { username: "Alice" },
        { username: "../etc" },
        { username: "a".repeat(33) },
        { username: "ok", extra: 1 },
        { username: "ok", invite: 5 },
      ],
    },
    {
      method: "POST",
      path: "/auth/register/verify",
      session: false,
      bodies: [
        {},
        { credential: "x" },
        { credential: { id: 1 } },
        { credential: { ...junkRegistration(), rawId: "BBBB" } },
        { credential: { ...junkRegistration(), id: "not base64url!" } },
        { credential: junkRegistration() },
        { credential: junkRegistration(b64(JSON.stringify({ challenge: { nested: true } }))) },
        { credential: junkRegistration(b64(JSON.stringify({ challenge: "unknown", type: "webauthn.create", origin: ORIGIN }))) },
      ],
    },
    { method: "POST", path: "/auth/login/options", session: false, bodies: [{ username: [] }, { username: "-bad-" }, { extra: true }] },
    {
      method: "POST",
      path: "/auth/login/verify",
      session: false,
      bodies: [
        {},
        { credential: null },
        { credential: junkAssertion() },
        { credential: junkAssertion(b64(JSON.stringify({ challenge: "nope" }))) },
        { credential: { ...junkAssertion(), type: "password" } },
      ],
    },
    {
      method: "POST",
      path: "/auth/recovery",
      session: false,
      bodies: [{}, { username: "x" }, { username: "x", code: "" }, { username: "x", code: "c".repeat(65) }, { username: 1, code: 2 }],
    },
    { method: "POST", path: "/auth/passkeys/options", session: true, bodies: [{ extra: 1 }, []] },
    {
      method: "POST",
      path: "/auth/passkeys/verify",
      session: true,
      bodies: [{}, { credential: junkRegistration() }, { credential: junkRegistration(), name: "" }, { credential: junkRegistration(), name: "n".repeat(65) }],
    },
    { method: "POST", path: "/auth/recovery-codes", session: true, bodies: [{ extra: 1 }, "x", { stepUp: null }, { stepUp: junkAssertion() }] },
    {
      method: "POST",
      path: "/auth/step-up/options",
      session: true,
      bodies: [{}, { action: "passkey.steal" }, { action: 1 }, { action: "passkey.add", extra: true }],
    },
  ];
  const raws = ["", "{", "null", "[]", "42", '"string"', '{"a":', "\u0000\u0001", "[".repeat(5000) + "]".repeat(5000)];

  for (const route of routes) {
    it(`${route.method} ${route.path}: junk JSON, wrong types, missing fields, wrong content type, huge body → clear 4xx`, async () => {
      for (const raw of raws) assertClientError(await send(route.method, route.path, raw, {}, route.session), `raw ${JSON.stringify(raw.slice(0, 20))}`);
      for (const body of route.bodies)
        assertClientError(await send(route.method, route.path, JSON.stringify(body), {}, route.session), JSON.stringify(body).slice(0, 80));
      const plain = await send(route.method, route.path, "{}", { "content-type": "text/plain" }, route.session);
      assertClientError(plain, "text/plain", [401, 415]);
      const huge = await send(route.method, route.path, JSON.stringify({ username: "x".repeat(1024 * 1024) }), {}, route.session);
      assert.equal(huge.status, 413, huge.text);
      assert.equal(huge.body.error.code, "payload_too_large");
      const chunked = freshClient();
      const streamed = await chunked.send(route.method, route.path, Buffer.alloc(200 * 1024, 0x20), {
        "content-type": "application/json",
        "transfer-encoding": "chunked",
      });
      assert.equal(streamed.status, 413, "a chunked body without Content-Length is limited too");
      if (route.session) {
        const anonymous = await send(route.method, route.path, "{}", {}, false);
        assert.equal(anonymous.status, 401, `${route.path} without a session`);
      }
    });
  }

  it("answers malformed ceremonies that carry a live challenge with 400/401, not 500", async () => {
    const c = freshClient();
    const reg = await c.post("/auth/register/options", { username: testUser("junk") });
    const clientData = b64(JSON.stringify({ type: "webauthn.create", challenge: reg.body.options.challenge, origin: ORIGIN }));
    assertClientError(await c.post("/auth/register/verify", { credential: junkRegistration(clientData) }), "junk attestation", [400]);

    const login = await c.post("/auth/login/options", {});
    const loginData = b64(JSON.stringify({ type: "webauthn.get", challenge: login.body.options.challenge, origin: ORIGIN }));
    const knownId = (await signedIn.get("/auth/passkeys")).body.passkeys[0].id;
    assertClientError(await c.post("/auth/login/verify", { credential: junkAssertion(loginData, knownId) }), "junk assertion", [401]);

    const add = freshClient();
    add.cookie = signedIn.cookie;
    const opts = await add.post("/auth/passkeys/options", {});
    const addData = b64(JSON.stringify({ type: "webauthn.create", challenge: opts.body.options.challenge, origin: ORIGIN }));
    const stepUp = await add.stepUp(passkey, "passkey.add");
    assertClientError(await add.post("/auth/passkeys/verify", { credential: junkRegistration(addData), stepUp }), "junk new passkey", [400]);

    const stepUpOptions = await add.post("/auth/step-up/options", { action: "recovery-codes.regenerate" });
    const stepUpData = b64(JSON.stringify({ type: "webauthn.get", challenge: stepUpOptions.body.options.challenge, origin: ORIGIN }));
    const junkStepUp = await add.post("/auth/recovery-codes", { stepUp: junkAssertion(stepUpData, knownId) });
    assertClientError(junkStepUp, "junk step-up", [403]);
    assert.equal(junkStepUp.body.error.code, "step_up_required");
  });

  it("DELETE /auth/passkeys/:id, GET /auth/session, GET /auth/passkeys: clear 4xx", async () => {
    for (const id of ["%00", "..", "x".repeat(2000), "AAAA"]) {
      assertClientError(await send("DELETE", `/auth/passkeys/${id}`, undefined, {}, true), `delete ${id.slice(0, 10)}`, [400, 404]);
      // The proxy refuses a NUL (400) and resolves ".." (no route: 404) before routing.
      assertClientError(await send("DELETE", `/auth/passkeys/${id}`, undefined, {}, false), `anonymous delete ${id.slice(0, 10)}`, [400, 401, 404]);
    }
    assertClientError(await send("GET", "/auth/session", undefined, { cookie: "hv_session=forged" }), "forged cookie", [401]);
    assertClientError(await send("GET", "/auth/passkeys", undefined, { cookie: `hv_session=${"A".repeat(43)}` }), "unknown token", [401]);
  });

  it("stored nothing for any of it", () => {
    const now = snapshot();
    // Failed attempts are audited; everything else is as before.
    assert.deepEqual(now, counts);
  });
});
