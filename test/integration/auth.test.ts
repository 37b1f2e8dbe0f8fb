import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { PublicClient, SoftwareAuthenticator, type Tamper } from "../helpers/authenticator.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { daemonForSuite, ORIGIN } from "../helpers/public-daemon.js";
import { testUser } from "../helpers/run-id.js";

function auditTrail(t: TestDaemon, action: string, target?: string) {
  return t.daemon.services.audit.list({ limit: 10_000 }).filter((e) => e.action === action && (target === undefined || e.target === target));
}

function count(t: TestDaemon, table: string, where = "1 = 1", ...args: unknown[]): number {
  return (t.daemon.services.db.prepare(`SELECT count(*) AS n FROM ${table} WHERE ${where}`).get(...args) as { n: number }).n;
}

describe("passkey accounts", () => {
  const { t, client } = daemonForSuite();

  it("registers, signs out, signs in, recovers once, enrols a new passkey, and then both passkeys work", async () => {
    const user = testUser("alice");
    const phone = new SoftwareAuthenticator(ORIGIN);
    const browser = client();

    const registered = await browser.register(user, phone);
    assert.equal(registered.status, 201, registered.text);
    assert.equal(registered.body.user, user);
    const codes: string[] = registered.body.recoveryCodes;
    assert.equal(codes.length, 10);
    assert.equal(new Set(codes).size, 10);
    const setCookie = String(registered.headers["set-cookie"]);
    assert.match(setCookie, /hv_session=[A-Za-z0-9_-]{43}; Path=\/; Max-Age=\d+; HttpOnly; SameSite=Lax/);
    assert.doesNotMatch(setCookie, /Secure/, "no Secure flag on an http origin");
    assert.equal((await browser.get("/auth/session")).body.scope, "full");
    assert.ok(t().daemon.services.users.hasUser(user), "the user exists with its slots");

    // Codes are stored as argon2id hashes only.
    const hashes = t().daemon.services.db.prepare("SELECT hash FROM recovery_codes WHERE user = ?").all(user) as { hash: string }[];
    assert.equal(hashes.length, 10);
    for (const { hash } of hashes) assert.match(hash, /^\$argon2id\$/);
    assert.ok(!hashes.some(({ hash }) => codes.some((c) => hash.includes(c))));

    assert.equal((await browser.logout()).body.signedOut, true);
    assert.equal(browser.cookie, undefined);
    assert.equal((await browser.get("/auth/session")).status, 401);

    const login = await browser.login(phone, { username: user });
    assert.equal(login.status, 200, login.text);
    assert.equal(login.body.user, user);
    assert.equal((await browser.get("/auth/session")).body.scope, "full");
    await browser.logout();

    // Lost the phone: a recovery code gives a recovery session that can enrol a passkey.
    const recovered = await browser.recover(user, codes[3]!.toUpperCase().replace(/-/g, " "));
    assert.equal(recovered.status, 200, recovered.text);
    assert.equal(recovered.body.scope, "recovery");
    assert.equal(t().daemon.services.sessions.authenticate(`hv_session=${browser.cookie}`)?.scope, "recovery");
    const again = await client().recover(user, codes[3]!);
    assert.equal(again.status, 401, "a recovery code works once only");

    const laptop = new SoftwareAuthenticator(ORIGIN);
    const enrolled = await browser.addPasskey(laptop, { name: "laptop" });
    assert.equal(enrolled.status, 201, enrolled.text);
    assert.equal(enrolled.body.scope, "full");
    assert.equal((await browser.get("/auth/session")).body.scope, "full", "the recovery session was upgraded");
    const listed = await browser.get("/auth/passkeys");
    const names = listed.body.passkeys.map((p: { name: string }) => p.name);
    assert.match(names[0], /^Passkey, \d{1,2} [A-Z][a-z]{2} \d{4}$/, "named for its kind and day, not numbered");
    assert.equal(names[1], "laptop");
    assert.equal(listed.body.recoveryCodesLeft, 9);

    for (const authenticator of [phone, laptop]) {
      const b = client();
      const res = await b.login(authenticator); // discoverable: no user name given
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.user, user);
    }

    for (const action of ["auth.register", "auth.logout", "auth.login", "auth.recovery", "auth.passkey.add"]) {
      const entries = auditTrail(t(), action, user).filter((e) => e.outcome === "ok");
      assert.ok(entries.length > 0, `${action} is audited`);
      for (const e of entries) {
        assert.ok(e.actor === `user:${user}`, `${action} actor ${e.actor}`);
        assert.ok(e.source?.startsWith("10."), `${action} has the client address, got ${e.source}`);
      }
    }
    const everything = JSON.stringify(t().daemon.services.audit.list({ limit: 10_000 }));
    for (const c of codes) assert.ok(!everything.includes(c), "no recovery code in the audit log");
    assert.ok(!everything.includes(browser.cookie!), "no session token in the audit log");
  });

  it("refuses an existing user name with 409, whether registered with a passkey or by the operator", async () => {
    const user = testUser("bob");
    assert.equal((await client().register(user, new SoftwareAuthenticator(ORIGIN))).status, 201);
    const taken = await client().register(user, new SoftwareAuthenticator(ORIGIN));
    assert.equal(taken.status, 409);
    assert.equal(taken.body.error.code, "conflict");
    assert.equal(count(t(), "passkeys", "user = ?", user), 1, "no second passkey on the existing account");

    const provisioned = testUser("carol");
    assert.equal((await t().operator.post("/users", { name: provisioned })).status, 201);
    const takeover = await client().register(provisioned, new SoftwareAuthenticator(ORIGIN));
    assert.equal(takeover.status, 409);
    assert.equal(count(t(), "accounts", "user = ?", provisioned), 0);
  });

  it("refuses a registration whose challenge was answered concurrently, leaving only the first user", async () => {
    // Two browsers ask for the same name before either finishes: the second finish must fail whole.
    const user = testUser("race");
    const [a, b] = [client(), client()];
    const [optsA, optsB] = await Promise.all([a, b].map((c) => c.post("/auth/register/options", { username: user })));
    const first = await a.post("/auth/register/verify", { credential: new SoftwareAuthenticator(ORIGIN).create(optsA!.body.options) });
    assert.equal(first.status, 201);
    const second = await b.post("/auth/register/verify", { credential: new SoftwareAuthenticator(ORIGIN).create(optsB!.body.options) });
    assert.equal(second.status, 409, second.text);
    assert.equal(count(t(), "passkeys", "user = ?", user), 1, "createUser failed, so no credential remains");
    assert.equal(count(t(), "recovery_codes", "user = ?", user), 10);
    assert.equal(b.cookie, undefined);
  });

  it("keeps no user when the passkey cannot be stored (its credential ID is already registered)", async () => {
    const owner = testUser("dora");
    const authenticator = new SoftwareAuthenticator(ORIGIN);
    assert.equal((await client().register(owner, authenticator)).status, 201);
    const copycat = testUser("eve");
    const res = await client().register(copycat, new SoftwareAuthenticator(ORIGIN), { tamper: { credentialId: authenticator.credentials[0]!.id } });
    assert.equal(res.status, 409, res.text);
    assert.equal(t().daemon.services.users.hasUser(copycat), false, "no user row remains");
    assert.equal(count(t(), "recovery_codes", "user = ?", copycat), 0);
  });

  it("refuses forged and replayed ceremonies with 400/401, stores nothing and audits each", async () => {
    const user = testUser("frank");
    const authenticator = new SoftwareAuthenticator(ORIGIN);
    const browser = client();

    const registrations: [string, Tamper, string][] = [
      ["wrong origin", { origin: "http://evil.example" }, "origin mismatch"],
      ["wrong RP ID hash", { rpId: "evil.example" }, "rp id hash mismatch"],
      ["wrong ceremony type", { type: "webauthn.get" }, "wrong ceremony type"],
      ["no user verification", { userVerified: false }, "user not verified"],
      ["another challenge", { challenge: Buffer.alloc(32, 7).toString("base64url") }, "challenge unknown, used or expired"],
    ];
    for (const [name, tamper, reason] of registrations) {
      const res = await client().register(user, new SoftwareAuthenticator(ORIGIN), { tamper });
      assert.equal(res.status, 400, `${name}: ${res.text}`);
      assert.equal(res.body.error.code, "bad_request");
      assert.equal(t().daemon.services.users.hasUser(user), false, `${name}: no user`);
      assert.equal(count(t(), "passkeys", "user = ?", user), 0);
      const newest = auditTrail(t(), "auth.register")[0]!;
      assert.equal(newest.outcome, "refused", `${name} is audited`);
      assert.equal(newest.details?.reason, reason);
    }
    assert.equal((await browser.register(user, authenticator)).status, 201);

    const logins: [string, Tamper, string][] = [
      ["wrong signature", { badSignature: true }, "signature invalid"],
      ["wrong origin", { origin: "http://localhost:9999" }, "origin mismatch"],
      ["wrong RP ID hash", { rpId: "example.org" }, "rp id hash mismatch"],
      ["wrong ceremony type", { type: "webauthn.create" }, "wrong ceremony type"],
      ["foreign user handle", { userHandle: Buffer.alloc(32, 1).toString("base64url") }, "user handle mismatch"],
    ];
    for (const [name, tamper, reason] of logins) {
      // A fresh user each time, so the per-user failure limit does not turn 401 into 429.
      const victim = testUser(`f${logins.findIndex(([n]) => n === name)}`);
      const key = new SoftwareAuthenticator(ORIGIN);
      assert.equal((await client().register(victim, key)).status, 201);
      const res = await client().login(key, { tamper });
      assert.equal(res.status, 401, `${name}: ${res.text}`);
      assert.equal(res.body.error.code, "unauthorized");
      assert.equal(res.headers["set-cookie"], undefined, `${name}: no cookie`);
      const [newest] = auditTrail(t(), "auth.login", victim);
      assert.equal(newest?.outcome, "refused", `${name} is audited as a failed login`);
      assert.equal(newest?.actor, "anonymous");
      assert.equal(newest?.details?.reason, reason);
    }

    // A challenge answers one ceremony only.
    const replayer = client();
    const options = await replayer.post("/auth/login/options", {});
    const credential = authenticator.get(options.body.options);
    assert.equal((await replayer.post("/auth/login/verify", { credential })).status, 200);
    const replay = await client().post("/auth/login/verify", { credential });
    assert.equal(replay.status, 401);
    assert.equal(auditTrail(t(), "auth.login", user)[0]?.details?.reason, "challenge unknown, used or expired");

    // A login challenge cannot register, and a registration challenge cannot sign in.
    const loginOptions = await client().post("/auth/login/options", {});
    const crossed = new SoftwareAuthenticator(ORIGIN).create({
      ...loginOptions.body.options,
      rp: { id: "localhost", name: "x" },
      user: { id: "AA", name: "x", displayName: "x" },
    });
    assert.equal((await client().post("/auth/register/verify", { credential: crossed })).status, 400);
  });

  it("signs in username-first only with that user's passkey", async () => {
    const [gina, hank] = [testUser("gina"), testUser("hank")];
    const ginaKey = new SoftwareAuthenticator(ORIGIN);
    const hankKey = new SoftwareAuthenticator(ORIGIN);
    assert.equal((await client().register(gina, ginaKey)).status, 201);
    assert.equal((await client().register(hank, hankKey)).status, 201);
    const options = await client().post("/auth/login/options", { username: gina });
    assert.deepEqual(
      options.body.options.allowCredentials.map((c: { id: string }) => c.id),
      [ginaKey.credentials[0]!.id.toString("base64url")],
    );
    const b = client();
    const opts = await b.post("/auth/login/options", { username: gina });
    const credential = hankKey.get({ ...opts.body.options, allowCredentials: [] });
    const res = await b.post("/auth/login/verify", { credential });
    assert.equal(res.status, 401, "hank's passkey does not sign in as gina");
  });

  it("removes a passkey (never the last) and signs out the user's other sessions at once", async () => {
    const user = testUser("ivan");
    const first = new SoftwareAuthenticator(ORIGIN);
    const second = new SoftwareAuthenticator(ORIGIN);
    const main = client();
    assert.equal((await main.register(user, first)).status, 201);
    const { sessions } = t().daemon.services;

    const onlyOne = (await main.get("/auth/passkeys")).body.passkeys[0].id as string;
    const last = await main.removePasskey(onlyOne, first);
    assert.equal(last.status, 409, "the last passkey cannot be removed");

    assert.equal((await main.addPasskey(second, { confirmWith: first })).status, 201);
    const elsewhere = client();
    assert.equal((await elsewhere.login(second)).status, 200);
    const elsewhereCookie = `hv_session=${elsewhere.cookie}`;
    assert.equal(sessions.authenticate(elsewhereCookie)?.user, user);

    const secondId = second.credentials[0]!.id.toString("base64url");
    const removed = await main.removePasskey(secondId, first);
    assert.equal(removed.status, 200, removed.text);
    assert.equal(removed.body.revokedSessions, 1);
    assert.equal(sessions.authenticate(elsewhereCookie), undefined, "the other session is gone from the cache too");
    assert.equal(sessions.authenticate(`hv_session=${main.cookie}`)?.user, user, "the session that removed it stays");
    assert.equal((await client().login(second)).status, 401, "the removed passkey no longer signs in");
    assert.equal(auditTrail(t(), "auth.passkey.remove", user)[0]?.outcome, "ok");

    assert.equal((await main.removePasskey(secondId, first)).status, 404);
    const stranger = client();
    const strangerKey = new SoftwareAuthenticator(ORIGIN);
    assert.equal((await stranger.register(testUser("judy"), strangerKey)).status, 201);
    assert.equal((await stranger.removePasskey(onlyOne, strangerKey)).status, 404, "nobody removes another user's passkey");
  });

  it("signs out a request with two different sessions, on sandbox paths and its own, and expires the cookies", async () => {
    const owner = new SoftwareAuthenticator(ORIGIN);
    const [victim, attacker] = [client(), client()];
    assert.equal((await victim.register(testUser("toss-v"), owner)).status, 201);
    assert.equal((await attacker.register(testUser("toss-a"), new SoftwareAuthenticator(ORIGIN))).status, 201);
    // What a browser sends once a sibling host set the attacker's cookie at Path=/dev: the longer path first.
    const both = { cookie: `hv_session=${attacker.cookie}; hv_session=${victim.cookie}` };
    // Host-only ones (ORIGIN is localhost: its Domain=localhost twins are the cookies unit test's).
    const expired = (res: { headers: Record<string, unknown> }) =>
      ([res.headers["set-cookie"]].flat() as string[])
        .filter((l) => /^hv_session=;.*Max-Age=0/.test(l) && !/Domain=/.test(l))
        .map((l) => /Path=([^;]*)/.exec(l)![1]);

    const page = await client().get("/dev/", { ...both, accept: "text/html" });
    assert.equal(page.status, 302, "the attacker's dev sandbox is not served");
    assert.equal(page.headers.location, "/login?next=%2Fdev%2F");
    assert.deepEqual(expired(page), ["/", "/dev", "/dev/"]);
    const api = await client().get("/dev/whoami", both);
    assert.equal(api.status, 401);
    assert.deepEqual(expired(api), ["/", "/dev", "/dev/", "/dev/whoami"]);

    const session = await client().get("/auth/session", both);
    assert.equal(session.status, 401);
    assert.deepEqual(expired(session), ["/", "/dev", "/auth", "/auth/", "/auth/session"]);
    assert.equal((await client().post("/auth/recovery-codes", {}, both)).status, 401);
    assert.equal((await client().get("/_hv/account", both)).status, 303);

    // Signing in again with both cookies: the expiries come first, the new session cookie last.
    const fresh = client();
    const options = await fresh.post("/auth/login/options", {}, both);
    const login = await fresh.post("/auth/login/verify", { credential: owner.get(options.body.options) }, both);
    assert.equal(login.status, 200, login.text);
    const lines = [login.headers["set-cookie"]].flat() as string[];
    assert.match(lines.at(-1)!, /^hv_session=[A-Za-z0-9_-]{43}; Path=\/;/);
    assert.equal(fresh.cookie, /^hv_session=([^;]*)/.exec(lines.at(-1)!)![1]);

    // Each cookie on its own is still its holder's session.
    assert.equal((await victim.get("/auth/session")).status, 200);
    assert.equal((await attacker.get("/auth/session")).status, 200);
  });

  it("revokes on logout immediately for authenticate()", async () => {
    const user = testUser("kim");
    const b = client();
    assert.equal((await b.register(user, new SoftwareAuthenticator(ORIGIN))).status, 201);
    const cookie = `hv_session=${b.cookie}`;
    assert.deepEqual({ ...t().daemon.services.sessions.authenticate(cookie), sessionId: "-" }, { user, scope: "full", sessionId: "-" });
    await b.logout();
    assert.equal(t().daemon.services.sessions.authenticate(cookie), undefined);
    assert.equal(count(t(), "sessions", "user = ?", user), 0);
  });

  it("lets a recovery session enrol a passkey and nothing else", async () => {
    const user = testUser("lee");
    const b = client();
    const reg = await b.register(user, new SoftwareAuthenticator(ORIGIN));
    await b.logout();
    assert.equal((await b.recover(user, reg.body.recoveryCodes[0]!)).status, 200);
    assert.equal(t().daemon.services.sessions.authenticate(`hv_session=${b.cookie}`)?.scope, "recovery");
    assert.equal((await b.get("/auth/passkeys")).status, 401);
    assert.equal((await b.post("/auth/recovery-codes", {})).status, 401);
    assert.equal((await b.delete(`/auth/passkeys/${"A".repeat(43)}`)).status, 401);
    const account = await b.get("/_hv/account");
    assert.equal(account.status, 303);
    assert.equal(account.headers.location, "/login?next=%2F_hv%2Faccount");
    assert.equal(count(t(), "recovery_codes", "user = ? AND used_at IS NULL", user), 9);
  });

  it("regenerates recovery codes with a full session; the old ones stop working", async () => {
    const user = testUser("mia");
    const b = client();
    const key = new SoftwareAuthenticator(ORIGIN);
    const reg = await b.register(user, key);
    const old = reg.body.recoveryCodes;
    const fresh = await b.regenerateRecoveryCodes(key);
    assert.equal(fresh.status, 200);
    assert.equal(fresh.body.recoveryCodes.length, 10);
    assert.equal(auditTrail(t(), "auth.recovery-codes.regenerate", user)[0]?.outcome, "ok");
    assert.equal((await client().recover(user, old[0]!)).status, 401);
    assert.equal((await client().recover(user, fresh.body.recoveryCodes[0])).status, 200);
  });

  it("refuses state-changing requests whose Origin is not the public origin", async () => {
    const user = testUser("ned");
    const b = client();
    assert.equal((await b.register(user, new SoftwareAuthenticator(ORIGIN))).status, 201);
    for (const origin of ["http://evil.example", "null", `http://127.0.0.1:${t().daemon.publicAddress.port}`]) {
      const res = await b.post("/auth/logout", undefined, { origin });
      assert.equal(res.status, 403, origin);
      assert.equal(res.body.error.code, "forbidden");
    }
    const noOrigin = await b.send("POST", "/auth/register/options", JSON.stringify({ username: testUser("nobody") }), {
      "content-type": "application/json",
      origin: "",
    });
    assert.equal(noOrigin.status, 403);
    assert.ok(t().daemon.services.sessions.authenticate(`hv_session=${b.cookie}`), "the session survived the forged logouts");
  });

  it("answers 429 with Retry-After per client address and per user name", async () => {
    const one = client();
    let res;
    for (let i = 0; i < 25; i++) {
      res = await one.post("/auth/login/options", {});
      if (res.status === 429) break;
    }
    assert.equal(res!.status, 429);
    assert.equal(res!.body.error.code, "rate_limited");
    assert.ok(Number(res!.headers["retry-after"]) >= 1);
    assert.equal((await client().post("/auth/login/options", {})).status, 200, "another address is not limited");

    // Failed recovery attempts for one user name from one address (tests of other addresses: auth-abuse.test.ts).
    const user = testUser("olga");
    const reg = await client().register(user, new SoftwareAuthenticator(ORIGIN));
    const guesser = client();
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await guesser.recover(user, "aaaa-bbbb-cccc")).status);
    assert.deepEqual(statuses, [401, 401, 401, 401, 401, 429]);
    const blocked = await guesser.recover(user, reg.body.recoveryCodes[0]);
    assert.equal(blocked.status, 429, "even a right code waits once this client's failures for the user are used up");
    assert.equal(count(t(), "recovery_codes", "user = ? AND used_at IS NULL", user), 10, "the right code was not spent");
  });
});

describe("registration modes", () => {
  it("HYPERVISOR_REGISTRATION=invite needs a valid single-use invite from the operator API", async () => {
    const t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, HYPERVISOR_REGISTRATION: "invite" } });
    try {
      const c = () => new PublicClient(t.publicUrl, ORIGIN);
      const none = await c().register(testUser("p1"), new SoftwareAuthenticator(ORIGIN));
      assert.equal(none.status, 403);
      const wrong = await c().register(testUser("p1"), new SoftwareAuthenticator(ORIGIN), { invite: "not-a-code" });
      assert.equal(wrong.status, 403);

      const page = await c().get("/register?invite=abc%22def");
      assert.match(page.text, /<input id="invite"[^>]*value="abc&quot;def"/, "the invite link fills the field, escaped");

      const created = await t.operator.post("/invites", { expiresInHours: 1 });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      assert.match(created.body.code, /^[A-Za-z0-9_-]{22}$/);
      assert.ok(Date.parse(created.body.expiresAt) > Date.now());
      const stored = t.daemon.services.db.prepare("SELECT code_hash FROM invites").all() as { code_hash: string }[];
      assert.ok(!JSON.stringify(stored).includes(created.body.code), "only the hash is stored");

      const ok = await c().register(testUser("p1"), new SoftwareAuthenticator(ORIGIN), { invite: created.body.code });
      assert.equal(ok.status, 201, ok.text);
      const reused = await c().register(testUser("p2"), new SoftwareAuthenticator(ORIGIN), { invite: created.body.code });
      assert.equal(reused.status, 403, "an invite is single-use");

      const list = await t.operator.get("/invites");
      assert.equal(list.status, 200);
      assert.deepEqual(
        list.body.invites.map((i: { state: string; usedBy: string }) => [i.state, i.usedBy]),
        [["used", testUser("p1")]],
      );
      assert.ok(!JSON.stringify(list.body).includes(created.body.code), "GET /invites shows no codes");
      const defaults = await t.operator.post("/invites");
      assert.equal(defaults.status, 201, "the body is optional");
      const audit = t.daemon.services.audit.list({ limit: 100 }).filter((e) => e.action === "invite.create");
      assert.equal(audit.length, 2);
      assert.ok(!JSON.stringify(audit).includes(created.body.code));
      assert.equal((await t.operator.post("/invites", { expiresInHours: 0 })).status, 400);
    } finally {
      await t.close();
    }
  });

  it("HYPERVISOR_REGISTRATION=closed refuses every registration and stores nothing", async () => {
    const t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, HYPERVISOR_REGISTRATION: "closed" } });
    try {
      const res = await new PublicClient(t.publicUrl, ORIGIN).register(testUser("q"), new SoftwareAuthenticator(ORIGIN));
      assert.equal(res.status, 403);
      assert.match(res.body.error.message, /closed/);
      assert.equal(t.daemon.services.users.users().length, 0);
      const page = await new PublicClient(t.publicUrl, ORIGIN).get("/register");
      assert.match(page.text, /Registration is closed/);
    } finally {
      await t.close();
    }
  });

  it("sets the Secure flag on the session cookie when the public origin is https", async () => {
    const origin = "https://sandbox.example.org";
    const t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: origin } });
    try {
      const res = await new PublicClient(t.publicUrl, origin).register(testUser("r"), new SoftwareAuthenticator(origin));
      assert.equal(res.status, 201, res.text);
      assert.match(String(res.headers["set-cookie"]), /; Secure/);
    } finally {
      await t.close();
    }
  });
});
