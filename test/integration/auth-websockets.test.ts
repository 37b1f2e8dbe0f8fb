import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { WebSocket } from "ws";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";
import { openWs } from "../helpers/ws-client.js";

const ORIGIN = "http://localhost:8080";

interface Watched {
  ws: WebSocket;
  /** Settles with the close code, from the moment the socket opened (it may close before anyone looks). */
  closed: Promise<string>;
}

/** How a socket ended within `ms`, or "open" if it still echoes then. */
async function fate({ ws, closed }: Watched, ms: number): Promise<string> {
  const settled = await Promise.race([closed, sleep(ms).then(() => "")]);
  if (settled) return settled;
  const echoed = new Promise<string>((resolve) => ws.once("message", () => resolve("open")));
  ws.send("still there?");
  return Promise.race([echoed, closed, sleep(2000).then(() => "silent")]);
}

/** DESIGN §5: revoking a session (logout, passkey removal, expiry, operator) closes its WebSockets with 1008. */
describe("WebSockets end with the session that opened them", () => {
  let t: TestDaemon;
  const client = () => new PublicClient(t.publicUrl, ORIGIN);
  const users: string[] = [];

  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN } });
  });
  after(async () => {
    for (const user of users) await t.daemon.services.manager.stop(user, "live").catch(() => undefined);
    await t.close();
  });

  const register = async (name: string) => {
    const user = testUser(name);
    users.push(user);
    const browser = client();
    const key = new SoftwareAuthenticator(ORIGIN);
    assert.equal((await browser.register(user, key)).status, 201);
    return { user, browser, key };
  };
  const socketOf = async (browser: PublicClient): Promise<Watched> => {
    const ws = await openWs(t.publicUrl, "/ws/echo", { cookie: `hv_session=${browser.cookie}`, origin: ORIGIN });
    return { ws, closed: new Promise((resolve) => ws.once("close", (code) => resolve(`closed ${code}`))) };
  };

  it("closes a session's sockets on logout, and only that session's", async () => {
    const { browser, key, user } = await register("wsa-logout");
    const other = client();
    assert.equal((await other.login(key, { username: user })).status, 200);
    const mine = await socketOf(browser);
    const theirs = await socketOf(other);
    assert.equal((await browser.logout()).status, 200);
    assert.equal(await fate(mine, 1000), "closed 1008");
    assert.equal(await fate(theirs, 0), "open", "the user's other session keeps its socket");
    theirs.ws.close();
  });

  it("closes the sockets of the sessions a passkey removal signs out", async () => {
    const { browser, user, key } = await register("wsa-passkey");
    const second = new SoftwareAuthenticator(ORIGIN);
    assert.equal((await browser.addPasskey(second, { confirmWith: key })).status, 201);
    const elsewhere = client();
    assert.equal((await elsewhere.login(second, { username: user })).status, 200);
    const kept = await socketOf(browser);
    const signedOut = await socketOf(elsewhere);
    const removed = await browser.removePasskey(second.credentials[0]!.id.toString("base64url"), key);
    assert.equal(removed.status, 200, removed.text);
    assert.equal(await fate(signedOut, 1000), "closed 1008");
    assert.equal(await fate(kept, 0), "open", "the session that removed the passkey keeps its socket");
    kept.ws.close();
  });

  it("closes the sockets of a session the control plane revokes", async () => {
    const { browser } = await register("wsa-revoke");
    const ws = await socketOf(browser);
    const session = t.daemon.services.sessions.authenticate(`hv_session=${browser.cookie}`)!;
    t.daemon.services.sessions.revoke(session.sessionId);
    assert.equal(await fate(ws, 1000), "closed 1008");
  });

  it("closes the sockets of a session that expires while nobody uses it", async () => {
    const absolute = await register("wsa-absolute");
    const idle = await register("wsa-idle");
    const byAge = await socketOf(absolute.browser);
    const byIdleness = await socketOf(idle.browser);
    // The clock moves on for the stored rows: one past its absolute expiry, one idle for days.
    const { db } = t.daemon.services;
    db.prepare("UPDATE sessions SET expires_at = ? WHERE user = ?").run(Date.now() - 1, absolute.user);
    db.prepare("UPDATE sessions SET last_seen_at = 0 WHERE user = ?").run(idle.user);
    // The daemon looks every few seconds; no request touches either session meanwhile.
    assert.equal(await fate(byAge, 7000), "closed 1008");
    assert.equal(await fate(byIdleness, 1000), "closed 1008");
  });
});
