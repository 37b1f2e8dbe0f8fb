import assert from "node:assert/strict";
import { request } from "node:http";
import { after, before, describe, it } from "node:test";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { testUser } from "../helpers/run-id.js";
import { upgradeStatus } from "../helpers/ws-client.js";

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

/**
 * DESIGN §4 sandbox origins, through the real daemon: HYPERVISOR_SANDBOX_DOMAIN=localhost, so
 * alice's sandboxes are http://live-alice.localhost:<port> and http://dev-alice.localhost:<port>.
 * Requests name their origin by Host, as a browser's would.
 */
describe("sandbox origins", () => {
  let t: TestDaemon;
  let port: number;
  let origin: string;
  const alice = testUser("so-alice");
  const bob = testUser("so-bob");
  const clients = new Map<string, PublicClient>();

  const at = (user: string, role: "live" | "dev") => `${role}-${user}.localhost:${port}`;
  /** A request to the listener with this Host, as a browser on that origin sends it. */
  const send = (host: string, path: string, headers: Record<string, string> = {}, method = "GET"): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port, method, path, headers: { host, ...headers }, agent: false }, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text }));
      });
      req.on("error", reject);
      req.end();
    });
  const setCookies = (a: Answer) => [a.headers["set-cookie"] ?? []].flat();
  const html = { accept: "text/html" };

  /** Public origin → launch code → sandbox origin → hv_sandbox: the cookie header for that origin. */
  async function launch(user: string, role: "live" | "dev"): Promise<string> {
    const c = clients.get(user)!;
    const started = await send(`localhost:${port}`, `/_hv/launch?role=${role}`, { cookie: `hv_session=${c.cookie}` });
    assert.equal(started.status, 303, started.text);
    const to = new URL(String(started.headers.location));
    assert.equal(to.origin, `http://${at(user, role)}`);
    const landed = await send(to.host, `${to.pathname}${to.search}`);
    assert.equal(landed.status, 303, landed.text);
    const [line] = setCookies(landed);
    return /^hv_sandbox=[^;]+/.exec(line!)![0];
  }

  before(async () => {
    port = await freePort();
    origin = `http://localhost:${port}`;
    t = await bootDaemon({ env: { HYPERVISOR_LISTEN: `127.0.0.1:${port}`, HYPERVISOR_PUBLIC_ORIGIN: origin, HYPERVISOR_SANDBOX_DOMAIN: "localhost" } });
    for (const user of [alice, bob]) {
      const c = new PublicClient(t.publicUrl, origin);
      assert.equal((await c.register(user, new SoftwareAuthenticator(origin))).status, 201);
      clients.set(user, c);
    }
  });
  after(async () => {
    for (const user of [alice, bob]) for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t.close();
  });

  it("launches through a one-time code into a host-only hv_sandbox cookie, then serves the sandbox there", async () => {
    const started = await send(`localhost:${port}`, "/_hv/launch?role=live&next=%2Fwhoami", { cookie: `hv_session=${clients.get(alice)!.cookie}` });
    assert.equal(started.status, 303);
    const to = new URL(String(started.headers.location));
    assert.equal(`${to.origin}${to.pathname}`, `http://${at(alice, "live")}/_hv/launch`);
    assert.equal(started.headers["referrer-policy"], "no-referrer");

    const landed = await send(to.host, `${to.pathname}${to.search}`);
    assert.equal(landed.status, 303);
    assert.equal(landed.headers.location, "/whoami", "on to the page asked for");
    const [line] = setCookies(landed);
    assert.match(line!, /^hv_sandbox=[A-Za-z0-9_-]{43}; Path=\/; HttpOnly; SameSite=Lax$/, "host-only: no Domain");
    assert.equal((await send(to.host, `${to.pathname}${to.search}`)).status, 403, "a code works once");

    const cookie = /^hv_sandbox=[^;]+/.exec(line!)![0];
    const whoami = await send(at(alice, "live"), "/whoami", { cookie });
    assert.equal(whoami.status, 200, whoami.text);
    const identity = JSON.parse(whoami.text);
    assert.deepEqual([identity.user, identity.role], [alice, "live"]);

    const echo = JSON.parse((await send(at(alice, "live"), "/echo", { cookie: `${cookie}; hv_session=${clients.get(alice)!.cookie}; theme=dark` })).text);
    assert.equal(echo.headers.cookie, "theme=dark", "neither of our cookies reaches the sandbox");
    assert.equal(echo.headers["x-forwarded-host"], at(alice, "live"));
    assert.equal(echo.url, "/echo", "paths reach the sandbox unchanged");

    const dev = await launch(alice, "dev");
    assert.equal(JSON.parse((await send(at(alice, "dev"), "/whoami", { cookie: dev })).text).role, "dev");
  });

  it("serves nothing of /auth or the account pages on a sandbox origin", async () => {
    const cookie = await launch(alice, "live");
    for (const path of ["/auth/session", "/auth/passkeys", "/_hv/account", "/login", "/_hv/assets/auth.js", "/_hv/healthz"]) {
      const res = await send(at(alice, "live"), path, { cookie: `${cookie}; hv_session=${clients.get(alice)!.cookie}` });
      assert.equal(res.status, 404, path);
      assert.deepEqual(JSON.parse(res.text), { error: "not_found", path }, `${path} is the sandbox's own 404`);
    }
    const logout = await send(at(alice, "live"), "/auth/logout", { cookie, origin: `http://${at(alice, "live")}` }, "POST");
    assert.deepEqual(JSON.parse(logout.text), { error: "not_found", path: "/auth/logout" }, "the sandbox's answer");
    assert.ok(t.daemon.services.sessions.authenticate(`hv_session=${clients.get(alice)!.cookie}`), "still signed in");
  });

  it("never opens one user's or role's origin with another's hv_sandbox or launch code", async () => {
    const aliceLive = await launch(alice, "live");
    for (const host of [at(bob, "live"), at(alice, "dev")]) {
      const page = await send(host, "/", { cookie: aliceLive, ...html });
      assert.equal(page.status, 302, host);
      assert.match(String(page.headers.location), new RegExp(`^${origin}/_hv/launch\\?role=(live|dev)$`));
      assert.equal((await send(host, "/whoami", { cookie: aliceLive })).status, 401, host);
    }
    const started = await send(`localhost:${port}`, "/_hv/launch?role=live", { cookie: `hv_session=${clients.get(alice)!.cookie}` });
    const code = new URL(String(started.headers.location)).search;
    assert.equal((await send(at(bob, "live"), `/_hv/launch${code}`)).status, 403, "alice's code does not open bob's origin");
    assert.equal((await send(at(alice, "live"), `/_hv/launch${code}`)).status, 403, "the attempt spent it: a code is tried once");
  });

  it("routes by Host first: unknown sandbox hosts are refused, the public origin serves no sandbox", async () => {
    for (const host of [`foo.localhost:${port}`, `live-${alice}.localhost:1`, `live-x.y.localhost:${port}`, `live-.localhost:${port}`]) {
      assert.equal((await send(host, "/", html)).status, 404, host);
    }
    const cookie = `hv_session=${clients.get(alice)!.cookie}`;
    const dev = await send(`localhost:${port}`, "/dev/page?x=1", { cookie, ...html });
    assert.equal(dev.status, 302);
    assert.equal(dev.headers.location, `${origin}/_hv/launch?role=dev&next=${encodeURIComponent("/page?x=1")}`);
    assert.equal((await send(`localhost:${port}`, "/whoami", { cookie })).status, 404);
    const account = await send(`localhost:${port}`, "/_hv/account", { cookie });
    assert.match(account.text, /href="\/_hv\/launch\?role=live"/);
    assert.match(account.text, /href="\/_hv\/launch\?role=dev"/);
    const anonymous = await send(`localhost:${port}`, "/_hv/launch?role=live");
    assert.equal(anonymous.status, 303);
    assert.equal(anonymous.headers.location, `/login?next=${encodeURIComponent("/_hv/launch?role=live")}`);
  });

  it("checks WebSocket Origin against the sandbox origin, and ends hv_sandbox with its session", async () => {
    const c = new PublicClient(t.publicUrl, origin);
    const passkey = new SoftwareAuthenticator(origin);
    const carol = testUser("so-carol");
    assert.equal((await c.register(carol, passkey)).status, 201);
    clients.set(carol, c);
    const cookie = await launch(carol, "live");
    const ws = (originHeader: string, host = at(carol, "live")) => upgradeStatus(`ws://127.0.0.1:${port}/ws`, { host, origin: originHeader, cookie });
    assert.equal(await ws(`http://${at(carol, "live")}`), 101);
    assert.equal(await ws(origin), 403, "the public origin's pages may not open a sandbox's socket");
    assert.equal(await ws(`http://${at(bob, "live")}`), 403, "nor another sandbox's");
    assert.equal(await ws(origin, `localhost:${port}`), 404, "the public origin has no sandbox sockets");

    assert.equal((await c.logout()).status, 200);
    assert.equal((await send(at(carol, "live"), "/whoami", { cookie })).status, 401, "logout ended the sandbox cookie");
    assert.equal(await ws(`http://${at(carol, "live")}`), 401);
    await t.daemon.services.manager.stop(carol, "live").catch(() => undefined);
  });
});
