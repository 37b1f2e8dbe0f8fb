import assert from "node:assert/strict";
import { join } from "node:path";
import { after, beforeEach, describe, it } from "node:test";
import { CHALLENGE_TTL_MS, ChallengeStore } from "../../hypervisor/auth/challenge-store.js";
import { RateLimiter } from "../../hypervisor/auth/rate-limiter.js";
import { FULL_SESSION, LAST_SEEN_WRITE_MS, RECOVERY_SESSION, SessionStore, sessionCookie } from "../../hypervisor/auth/session-store.js";
import { sessionTokens } from "../../proxy/cookies.js";
import { openDatabase, type Db } from "../../hypervisor/db/database.js";
import { tempDir } from "../helpers/daemon.js";

const HOUR = 60 * 60 * 1000;
const MINUTE = 60 * 1000;

describe("SessionStore", () => {
  const dir = tempDir();
  let db: Db;
  let clock: number;
  let store: SessionStore;
  const now = () => clock;
  const cookie = (token: string) => `theme=dark; hv_session=${token}; other=1`;
  const lastSeenInDb = (sessionId: string) =>
    (db.prepare("SELECT last_seen_at FROM sessions WHERE id = ?").get(sessionId) as { last_seen_at: number } | undefined)?.last_seen_at;

  beforeEach(() => {
    db?.close();
    db = openDatabase(join(dir.path, `${Math.random().toString(36).slice(2)}.db`));
    for (const name of ["alice", "bob"]) db.prepare("INSERT INTO users (name, created_at) VALUES (?, 0)").run(name);
    clock = 1_700_000_000_000;
    store = new SessionStore(db, { now });
  });
  after(() => {
    db?.close();
    dir.remove();
  });

  it("authenticates the cookie it issued, with user, session id and scope", () => {
    const { token, session } = store.create("alice", "full");
    assert.match(token, /^[A-Za-z0-9_-]{43}$/, "256 random bits, base64url");
    assert.deepEqual(store.authenticate(cookie(token)), { user: "alice", sessionId: session.sessionId, scope: "full" });
    assert.deepEqual(store.authenticate(`hv_session=${token}`), session);
  });

  it("stores only the SHA-256 of the token", () => {
    const { token } = store.create("alice", "full");
    const dump = JSON.stringify(db.prepare("SELECT * FROM sessions").all());
    assert.ok(!dump.includes(token));
  });

  it("returns nothing for missing, malformed, unknown or foreign cookies", () => {
    store.create("alice", "full");
    for (const header of [undefined, "", "hv_session=", "hv_session=short", `hv_session=${"A".repeat(43)}`, `hv_session_x=${"A".repeat(43)}`, "garbage;;;="]) {
      assert.equal(store.authenticate(header), undefined, String(header));
    }
  });

  it("tries each hv_session cookie, so a stale one before the valid one does not sign the user out", () => {
    const { token } = store.create("alice", "full");
    assert.equal(store.authenticate(`hv_session=${"B".repeat(43)}; hv_session=${token}`)?.user, "alice");
  });

  it("counts two different valid sessions as signed out, in either order and whoever holds them (DESIGN §5)", () => {
    const victim = store.create("alice", "full").token;
    const tossed = store.create("bob", "full").token;
    const sameUser = store.create("alice", "recovery").token;
    for (const header of [
      `hv_session=${tossed}; hv_session=${victim}`,
      `hv_session=${victim}; hv_session=${tossed}`,
      `hv_session=${victim}; hv_session=${sameUser}`,
    ]) {
      assert.equal(store.authenticate(header), undefined, header);
    }
    assert.equal(store.authenticate(`hv_session=${victim}; hv_session=${victim}`)?.user, "alice", "the same session twice is one session");
    assert.equal(store.authenticate(`hv_session=${victim}`)?.user, "alice", "neither session was harmed");
  });

  it("counts more session cookies than it tries as signed out, so a flood cannot hide the owner's cookie", () => {
    const { token } = store.create("bob", "full");
    const junk = Array.from({ length: 4 }, (_, i) => `hv_session=${String(i).repeat(43)}`).join("; ");
    assert.equal(store.authenticate(`${junk}; hv_session=${token}`), undefined);
    assert.equal(store.authenticate(`hv_session=${token}; ${junk}`), undefined);
    assert.equal(store.authenticate(`${junk.split("; ").slice(1).join("; ")}; hv_session=${token}`)?.user, "bob", "four are still tried");
  });

  it("expires after 12 hours idle, and each use restarts the idle clock", () => {
    assert.equal(FULL_SESSION.idleMs, 12 * HOUR);
    const { token } = store.create("alice", "full");
    clock += 11 * HOUR;
    assert.ok(store.authenticate(cookie(token)));
    clock += 12 * HOUR - 1;
    assert.ok(store.authenticate(cookie(token)), "used 11 h ago: still valid");
    clock += 12 * HOUR;
    assert.equal(store.authenticate(cookie(token)), undefined, "12 h idle: expired");
    assert.equal((db.prepare("SELECT count(*) AS n FROM sessions").get() as { n: number }).n, 0, "the expired row is deleted");
  });

  it("expires 7 days after sign-in however busy it is", () => {
    assert.equal(FULL_SESSION.absoluteMs, 7 * 24 * HOUR);
    const { token } = store.create("alice", "full");
    for (let h = 1; h < 7 * 24; h++) {
      clock += HOUR;
      assert.ok(store.authenticate(cookie(token)), `hour ${h}`);
    }
    clock += HOUR;
    assert.equal(store.authenticate(cookie(token)), undefined);
  });

  it("gives recovery sessions scope 'recovery' and a 15-minute life", () => {
    const { token } = store.create("alice", "recovery");
    assert.equal(store.authenticate(cookie(token))?.scope, "recovery");
    clock += RECOVERY_SESSION.absoluteMs;
    assert.equal(store.authenticate(cookie(token)), undefined);
  });

  it("serves cached sessions without reading SQLite, and writes last-seen at most once a minute", () => {
    const { token, session } = store.create("alice", "full");
    const created = clock;
    clock += 30_000;
    store.authenticate(cookie(token));
    assert.equal(lastSeenInDb(session.sessionId), created, "no write within the minute");
    clock += LAST_SEEN_WRITE_MS;
    store.authenticate(cookie(token));
    assert.equal(lastSeenInDb(session.sessionId), clock, "written once the minute has passed");

    // Behind the store's back (which never happens in the daemon: it is the only writer), the
    // row disappears: a cached session still answers, which shows SQLite was not read.
    db.prepare("UPDATE sessions SET user = 'bob' WHERE id = ?").run(session.sessionId);
    clock += 1000;
    assert.equal(store.authenticate(cookie(token))?.user, "alice");
  });

  it("revokes at once: logout, and all of a user's sessions but one", () => {
    const a1 = store.create("alice", "full");
    const a2 = store.create("alice", "full");
    const a3 = store.create("alice", "recovery");
    const b1 = store.create("bob", "full");
    for (const s of [a1, a2, a3, b1]) assert.ok(store.authenticate(cookie(s.token)), "cached");

    store.revoke(a1.session.sessionId);
    assert.equal(store.authenticate(cookie(a1.token)), undefined);

    assert.equal(store.revokeUser("alice", { except: a2.session.sessionId }), 1);
    assert.ok(store.authenticate(cookie(a2.token)), "the kept session");
    assert.equal(store.authenticate(cookie(a3.token)), undefined);
    assert.ok(store.authenticate(cookie(b1.token)), "another user's session is untouched");
    assert.equal(store.count("alice"), 1);
  });

  it("tells its listeners of every session that ends, once: revocation, and expiry found by the sweep", () => {
    const ended: string[] = [];
    store.onEnded((id) => ended.push(id));
    const [a, b, c] = [0, 1, 2].map(() => store.create("alice", "full"));
    const d = store.create("bob", "full");
    store.revoke(a!.session.sessionId);
    store.revoke(a!.session.sessionId);
    assert.deepEqual(ended, [a!.session.sessionId], "logout, and only once");
    assert.equal(store.revokeUser("alice", { except: b!.session.sessionId }), 1);
    assert.deepEqual(ended.slice(1), [c!.session.sessionId], "passkey removal: the user's other sessions");

    // Nobody uses d for 12 hours; b is used: the sweep ends d alone, without anyone asking for it.
    clock += 6 * HOUR;
    assert.ok(store.authenticate(cookie(b!.token)));
    clock += 6 * HOUR;
    assert.ok(store.authenticate(cookie(b!.token)));
    store.sweep();
    assert.deepEqual(ended.slice(2), [d.session.sessionId], "idle expiry");
    assert.equal(store.authenticate(cookie(d.token)), undefined);
    // Kept busy, b still ends at its absolute expiry.
    for (let h = 18; h < 7 * 24; h += 6) {
      clock += 6 * HOUR;
      assert.ok(store.authenticate(cookie(b!.token)), `hour ${h}`);
    }
    store.sweep();
    assert.equal(ended.length, 3, "not before its time");
    clock += 6 * HOUR;
    store.sweep();
    assert.deepEqual(ended.slice(3), [b!.session.sessionId], "absolute expiry");
    store.sweep();
    assert.equal(ended.length, 4, "an ended session is told once");
  });

  it("sweeps expired sessions it does not hold in memory from SQLite, and says so", () => {
    const { session } = store.create("alice", "full");
    const other = new SessionStore(db, { now });
    const ended: string[] = [];
    other.onEnded((id) => ended.push(id));
    clock += 12 * HOUR + 2 * LAST_SEEN_WRITE_MS;
    other.sweep();
    assert.deepEqual(ended, [session.sessionId]);
    assert.equal(store.count("alice"), 0);
  });

  it("holds a bounded number of sessions in memory and reads evicted ones back with their idle time", () => {
    store = new SessionStore(db, { now, cacheSize: 2 });
    const sessions = [store.create("alice", "full"), store.create("alice", "full"), store.create("bob", "full")];
    clock += 30_000; // not yet written to SQLite ...
    assert.ok(store.authenticate(cookie(sessions[0]!.token)));
    store.authenticate(cookie(sessions[1]!.token));
    store.authenticate(cookie(sessions[2]!.token)); // ... but evicting sessions[0] writes it
    assert.equal(lastSeenInDb(sessions[0]!.session.sessionId), clock);
    for (const s of sessions) assert.ok(store.authenticate(cookie(s.token)));
  });

  it("survives a restart: a new store on the same database knows the session", () => {
    const { token } = store.create("bob", "full");
    const restarted = new SessionStore(db, { now });
    assert.equal(restarted.authenticate(cookie(token))?.user, "bob");
  });

  it("writes the cookie HttpOnly, SameSite=Lax, Path=/, Secure only for https", () => {
    assert.equal(sessionCookie("tok", { secure: false, maxAgeSeconds: 60 }), "hv_session=tok; Path=/; Max-Age=60; HttpOnly; SameSite=Lax");
    assert.match(sessionCookie("tok", { secure: true, maxAgeSeconds: 60 }), /; Secure$/);
    assert.deepEqual(sessionTokens('a=1; hv_session="x"; hv_session=y'), ["x", "y"]);
  });
});

describe("RateLimiter", () => {
  it("allows a burst of `capacity`, then refills continuously and says when to retry", () => {
    let clock = 0;
    const limiter = new RateLimiter({ capacity: 5, perMinute: 5 }, () => clock);
    for (let i = 0; i < 5; i++) assert.equal(limiter.take("alice").ok, true);
    const refused = limiter.take("alice");
    assert.deepEqual(refused, { ok: false, retryAfterSeconds: 12 });
    assert.equal(limiter.take("bob").ok, true, "keys are independent");
    clock += 12_000;
    assert.equal(limiter.check("alice").ok, true);
    assert.equal(limiter.take("alice").ok, true);
    assert.equal(limiter.take("alice").ok, false);
    clock += 10 * MINUTE;
    for (let i = 0; i < 5; i++) assert.equal(limiter.take("alice").ok, true, "refills to capacity, not beyond");
    assert.equal(limiter.take("alice").ok, false);
  });

  it("forgets the least recently used keys beyond its bound", () => {
    const limiter = new RateLimiter({ capacity: 1, perMinute: 1 }, () => 0, 2);
    limiter.take("a");
    limiter.take("b");
    limiter.take("c");
    assert.equal(limiter.take("a").ok, true, "a was forgotten and starts full");
    assert.equal(limiter.take("c").ok, false);
  });
});

describe("ChallengeStore", () => {
  it("gives a challenge back once, for its own ceremony, within five minutes", () => {
    let clock = 0;
    const store = new ChallengeStore(() => clock);
    assert.equal(CHALLENGE_TTL_MS, 5 * MINUTE);
    store.issue("c1", { kind: "login", username: "alice" }, "client");
    assert.deepEqual(store.take("c1", "login"), { kind: "login", username: "alice" });
    assert.equal(store.take("c1", "login"), undefined, "single use");

    store.issue("c2", { kind: "login", username: undefined }, "client");
    assert.equal(store.take("c2", "register"), undefined, "another ceremony's challenge");
    assert.equal(store.take("c2", "login"), undefined, "and a mismatched take burns it");

    store.issue("c3", { kind: "login", username: undefined }, "client");
    clock += CHALLENGE_TTL_MS;
    assert.equal(store.take("c3", "login"), undefined, "expired");
  });
});
