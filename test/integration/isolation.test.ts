import assert from "node:assert/strict";
import Database from "better-sqlite3";
import { connect } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";
import { baseUrl, getJson } from "../helpers/sandbox-client.js";
import { upgradeStatus } from "../helpers/ws-client.js";

const ORIGIN = "http://hv.test";

/** Sends bytes exactly as written and returns the raw response text (for smuggling attempts). */
function rawExchange(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    let out = "";
    socket.on("data", (c) => (out += c.toString("latin1")));
    socket.on("error", reject);
    socket.on("close", () => resolve(out));
    socket.write(text.replace(/\n/g, "\r\n"));
    setTimeout(() => socket.end(), 1000);
  });
}

describe("isolation between users, through the real daemon and real sessions", () => {
  const state = tempDir();
  let t: TestDaemon;
  const alice = testUser("iso2-alice");
  const bob = testUser("iso2-bob");
  let aliceCookie: string;
  let port: number;
  const bobEndpoints: { host: string; port: number }[] = [];

  /** What bob's sandboxes themselves logged, excluding the hypervisor's health checks. */
  const bobSaw = async () => {
    const all: { url: string; user: string | null; upgrade: boolean }[] = [];
    for (const e of bobEndpoints) {
      const { body } = await getJson<{ requests: { url: string; user: string | null; upgrade: boolean }[] }>(`${baseUrl(e)}/__sandbox/requests`);
      all.push(...body.requests.filter((r) => r.url !== "/health" && r.url !== "/__sandbox/requests"));
    }
    return all;
  };

  before(async () => {
    t = await bootDaemon({ stateDir: state.path, env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN } });
    port = Number(new URL(t.publicUrl).port);
    for (const name of [alice, bob]) await t.operator.post("/users", { name });
    aliceCookie = `hv_session=${t.daemon.services.sessions.create(alice, "full").token}`;
    for (const role of ["live", "dev"] as const) bobEndpoints.push((await t.daemon.services.manager.ensure(bob, role)).endpoint);
    // Both of alice's running: a trick that lands in her dev sandbox is answered at once, not
    // after a cold start that could outlast rawExchange's one-second window on a loaded machine.
    for (const role of ["live", "dev"] as const) await t.daemon.services.manager.ensure(alice, role);
  });
  after(async () => {
    for (const user of [alice, bob]) for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t.close();
    state.remove();
  });

  it("keeps every HTTP trick of alice inside her own sandboxes", async () => {
    const tricks: [string, Record<string, string>][] = [
      ["/whoami", { "x-hypervisor-user": bob }],
      ["/whoami", { "X-Hypervisor-User": bob, "x-hypervisor-role": "dev" }],
      ["/whoami", { host: `${bob}.hv.test` }],
      ["/whoami", { "x-forwarded-host": `${bob}.hv.test`, forwarded: `for=1.2.3.4;host=${bob}` }],
      ["/dev/../whoami", {}],
      ["/%2e%2e/%2e%2e/whoami", {}],
      ["//dev//whoami", {}],
      [`/${bob}/whoami`, {}],
      [`/dev/../../${bob}/dev/whoami`, {}],
    ];
    for (const [path, headers] of tricks) {
      const res = await rawExchange(
        port,
        `GET ${path} HTTP/1.1\nHost: ${headers.host ?? "hv.test"}\nCookie: ${aliceCookie}\n${Object.entries(headers)
          .filter(([k]) => k !== "host")
          .map(([k, v]) => `${k}: ${v}\n`)
          .join("")}Connection: close\n\n`,
      );
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(res)?.[1]);
      assert.ok(status === 200 || status === 404 || status === 400, `${path}: ${status}`);
      if (status === 200) assert.match(res, new RegExp(`"user":"${alice}"`), `${path} answered as alice`);
    }
    for (const path of ["/dev%2fwhoami", "/dev%2F..%2Fwhoami", "/..%5cwhoami"]) {
      const res = await rawExchange(port, `GET ${path} HTTP/1.1\nHost: hv.test\nCookie: ${aliceCookie}\nConnection: close\n\n`);
      assert.match(res, /^HTTP\/1\.1 400/, path);
    }
    assert.deepEqual(await bobSaw(), [], "nothing of alice's reached bob's sandboxes");
  });

  it("refuses revoked, forged, expired and missing sessions before any byte reaches a sandbox", async () => {
    const { sessions } = t.daemon.services;
    const revoked = sessions.create(bob, "full");
    sessions.revoke(revoked.session.sessionId);
    const forged = "A".repeat(43);
    for (const cookie of [`hv_session=${revoked.token}`, `hv_session=${forged}`, "hv_session=", `hv_session=${aliceCookie}`, ""]) {
      const res = await getJson(`${t.publicUrl}/whoami`, { headers: cookie ? { cookie } : {} });
      assert.equal(res.status, 401, `cookie ${cookie.slice(0, 24)}…`);
    }
    // An expired session, seen by a daemon that has not cached it.
    const expiring = sessions.create(bob, "full");
    await t.close();
    const db = new Database(join(state.path, "hypervisor.db"));
    db.prepare("UPDATE sessions SET expires_at = ? WHERE id = ?").run(Date.now() - 1000, expiring.session.sessionId);
    db.close();
    t = await bootDaemon({ stateDir: state.path, env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN } });
    port = Number(new URL(t.publicUrl).port);
    const expired = await getJson(`${t.publicUrl}/whoami`, { headers: { cookie: `hv_session=${expiring.token}` } });
    assert.equal(expired.status, 401, "an expired session is refused");
    assert.deepEqual(await bobSaw(), []);
  });

  it("refuses WebSocket upgrades without a session, with a revoked one or from a foreign origin", async () => {
    const { sessions } = t.daemon.services;
    const bobSession = sessions.create(bob, "full");
    const ws = `${t.publicUrl.replace("http", "ws")}/ws/echo`;
    assert.equal(await upgradeStatus(ws, { origin: ORIGIN }), 401);
    assert.equal(await upgradeStatus(ws, { origin: "http://evil.test", cookie: `hv_session=${bobSession.token}` }), 403);
    assert.equal(await upgradeStatus(ws, { cookie: `hv_session=${bobSession.token}` }), 403, "no Origin at all");
    sessions.revoke(bobSession.session.sessionId);
    assert.equal(await upgradeStatus(ws, { origin: ORIGIN, cookie: `hv_session=${bobSession.token}` }), 401);
    assert.deepEqual(
      (await bobSaw()).filter((r) => r.upgrade),
      [],
      "no upgrade reached bob's sandboxes",
    );
  });

  it("does not let a CL/TE smuggled request through", async () => {
    const aliceCookieNow = `hv_session=${t.daemon.services.sessions.create(alice, "full").token}`;
    const smuggled = `GET /whoami HTTP/1.1\nHost: hv.test\nX-Hypervisor-User: ${bob}\n\n`;
    const variants = [
      `POST /upload HTTP/1.1\nHost: hv.test\nCookie: ${aliceCookieNow}\nContent-Length: ${5 + smuggled.replace(/\n/g, "\r\n").length}\nTransfer-Encoding: chunked\n\n0\n\n${smuggled}`,
      `POST /upload HTTP/1.1\nHost: hv.test\nCookie: ${aliceCookieNow}\nTransfer-Encoding: chunked\nTransfer-Encoding: identity\n\n0\n\n${smuggled}`,
      `POST /upload HTTP/1.1\nHost: hv.test\nCookie: ${aliceCookieNow}\nContent-Length: 4\nContent-Length: 40\n\n0\n\n${smuggled}`,
    ];
    for (const v of variants) {
      const res = await rawExchange(port, v);
      assert.match(res, /^HTTP\/1\.1 400/, "an ambiguous message is refused outright");
      assert.ok(!res.includes(`"user":"${bob}"`));
    }
    assert.deepEqual(await bobSaw(), []);
  });
});
