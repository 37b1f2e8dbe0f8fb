import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { createServer, request, type Server } from "node:http";
import { connect, type AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { createLogger } from "../../hypervisor/logger.js";
import { AddressSet } from "../../proxy/addresses.js";
import type { Session } from "../../proxy/auth-gate.js";
import { PublicProxy } from "../../proxy/public-proxy.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";
import { baseUrl, getJson } from "../helpers/sandbox-client.js";
import { openWs, upgradeStatus } from "../helpers/ws-client.js";
import { logText } from "../../hypervisor/runtime/log-lines.js";

/**
 * The data plane on its own: a real PublicProxy on a real socket in front of real sandboxes
 * (process runtime), with a token map standing in for the session store.
 */
describe("public proxy", () => {
  let t: TestDaemon;
  let server: Server;
  let proxy: PublicProxy;
  let url: string;
  const origin = "http://hv.test";
  const alice = testUser("px-alice");
  const bob = testUser("px-bob");
  const sessions = new Map<string, Session>([
    ["alice-token", { user: alice, sessionId: "alice-1", scope: "full" }],
    ["bob-token", { user: bob, sessionId: "bob-1", scope: "full" }],
    ["alice-recovery", { user: alice, sessionId: "alice-2", scope: "recovery" }],
  ]);
  const cookie = (token: string) => ({ cookie: `theme=dark; hv_session=${token}` });
  const tokenOf = (header: string | undefined) => /hv_session=([^;]+)/.exec(header ?? "")?.[1] ?? "";

  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: origin } });
    for (const name of [alice, bob]) await t.operator.post("/users", { name });
    proxy = new PublicProxy({
      credentials: (header) => ({ presented: 1, keys: [tokenOf(header)] }),
      authenticateCredentials: ({ keys }) => sessions.get(keys?.[0] ?? ""),
      targets: t.daemon.services.manager,
      routes: t.daemon.services.routing,
      app: (_req, res) => res.writeHead(200, { "content-type": "text/plain" }).end("reserved"),
      publicOrigin: new URL(origin),
      trustedProxies: AddressSet.parse("127.0.0.1/32"),
      log: t.daemon.services.log,
      drainMs: 1000,
    });
    server = createServer(proxy.handleRequest);
    server.on("upgrade", proxy.handleUpgrade);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    proxy.close();
    server.closeAllConnections();
    server.close();
    for (const user of [alice, bob]) for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(user, role);
    await t.close();
  });

  const sandboxRequests = async (user: string, role: "live" | "dev") => {
    const target = await t.daemon.services.manager.ensure(user, role);
    return (await getJson<{ requests: { url: string; user: string | null; upgrade: boolean }[] }>(`${baseUrl(target.endpoint)}/__sandbox/requests`)).body
      .requests;
  };

  it("redirects an anonymous page request to /login and answers other anonymous requests 401 JSON", async () => {
    const page = await fetch(`${url}/some/page?x=1`, { headers: { accept: "text/html" }, redirect: "manual" });
    assert.equal(page.status, 302);
    assert.equal(page.headers.get("location"), `/login?next=${encodeURIComponent("/some/page?x=1")}`);
    const api = await getJson(`${url}/api/tasks`);
    assert.equal(api.status, 401);
    assert.equal(api.body.error.code, "unauthorized");
    assert.equal(typeof api.body.error.requestId, "string");
    const recovery = await getJson(`${url}/whoami`, { headers: cookie("alice-recovery") });
    assert.equal(recovery.status, 401, "a recovery session may only enrol a passkey");
  });

  it("leaves reserved paths to the hypervisor's own routes", async () => {
    for (const path of ["/login", "/auth/x", "/_hv/healthz", "/dev/../_hv/healthz", "/%2e%2e/login"]) {
      const res = await fetch(`${url}${path}`);
      assert.equal(await res.text(), "reserved", path);
    }
  });

  it("sends / to live and /dev/ to dev with the prefix stripped, with identity headers", async () => {
    const live = await getJson(`${url}/echo/x?q=1`, { headers: cookie("alice-token") });
    assert.equal(live.status, 200);
    assert.equal(live.body.url, "/echo/x?q=1");
    assert.equal(live.body.headers["x-hypervisor-user"], alice);
    assert.equal(live.body.headers["x-hypervisor-role"], "live");
    assert.match(live.body.headers["x-hypervisor-generation"], /^\d+$/);
    assert.equal(live.headers.get("x-hypervisor-generation"), live.body.headers["x-hypervisor-generation"]);
    const dev = await getJson(`${url}/dev/echo/y`, { headers: cookie("alice-token") });
    assert.equal(dev.body.url, "/echo/y");
    assert.equal(dev.body.headers["x-hypervisor-role"], "dev");
    const liveSlot = (await getJson(`${url}/whoami`, { headers: cookie("alice-token") })).body.slot;
    const devSlot = (await getJson(`${url}/dev/whoami`, { headers: cookie("alice-token") })).body.slot;
    assert.notEqual(liveSlot, devSlot);
    const bare = await fetch(`${url}/dev`, { headers: cookie("alice-token"), redirect: "manual" });
    assert.equal(bare.status, 308);
    assert.equal(bare.headers.get("location"), "/dev/");
  });

  it("strips credentials, spoofed identity and hop-by-hop headers and sets X-Forwarded-*", async () => {
    // node:http rather than fetch: undici refuses a custom Connection header.
    const res = await rawGet(url, "/echo", "alice-token", {
      cookie: "theme=dark; hv_session=alice-token",
      authorization: "Bearer stolen",
      "x-hypervisor-user": bob,
      "X-Hypervisor-Role": "dev",
      "x-forwarded-for": "6.6.6.6, 10.1.2.3",
      connection: "x-drop-me",
      "x-drop-me": "1",
      "x-keep-me": "1",
    });
    const h = (JSON.parse(res.body) as { headers: Record<string, string> }).headers as Record<string, string>;
    assert.equal(h["x-hypervisor-user"], alice);
    assert.equal(h["x-hypervisor-role"], "live");
    assert.equal(h.authorization, undefined);
    assert.equal(h.cookie, "theme=dark", "the sandbox keeps its own cookies, never the session");
    // From a trusted proxy (this test, as the TLS front) only the hop it added is believed; never the whole chain.
    assert.equal(h["x-forwarded-for"], "10.1.2.3");
    assert.equal(h["x-forwarded-proto"], "http");
    assert.equal(h["x-forwarded-host"], "hv.test");
    assert.equal(h["x-drop-me"], undefined, "fields named in Connection are hop-by-hop");
    assert.equal(h["x-keep-me"], "1");
    const junk = await rawGet(url, "/echo", "alice-token", { "x-forwarded-for": "not-an-address" });
    assert.equal((JSON.parse(junk.body) as { headers: Record<string, string> }).headers["x-forwarded-for"], "127.0.0.1");
  });

  it("strips identity headers spelled with underscores, which CGI stacks read as ours", async () => {
    // A raw socket: node:http and fetch would refuse or normalise these names; Node's server accepts them.
    const request = [
      "GET /echo HTTP/1.1",
      "Host: hv.test",
      "Cookie: hv_session=alice-token",
      `X_Hypervisor_User: ${bob}`,
      "X-Hypervisor_Role: dev",
      "X_Forwarded_For: 6.6.6.6",
      "X_Forwarded-Host: evil.test",
      "Connection: close",
      "",
      "",
    ].join("\r\n");
    const response = await rawRequest(url, request);
    assert.match(response, /^HTTP\/1\.1 200 /);
    const { rawHeaders } = JSON.parse(response.slice(response.indexOf("\r\n\r\n") + 4)) as { rawHeaders: string[] };
    const names = rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    assert.deepEqual(
      names.filter((n) => /hypervisor|forwarded/.test(n)),
      ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-hypervisor-user", "x-hypervisor-role", "x-hypervisor-generation"],
    );
    assert.equal(rawHeaders[rawHeaders.findIndex((v, i) => i % 2 === 0 && v.toLowerCase() === "x-hypervisor-user") + 1], alice);
  });

  it("never lets a path trick, Host header or spoofed header reach another user's sandbox", async () => {
    const tricks = ["/dev/../whoami", "/%2e%2e/dev/whoami", "/dev/%2e%2e/%2e%2e/whoami", "//dev//whoami", "/DEV/whoami", `/../${bob}/whoami`];
    for (const path of tricks) {
      const res = await getJson(`${url}${path}`, { headers: { ...cookie("alice-token"), host: "bob.hv.test", "x-hypervisor-user": bob } });
      assert.ok(res.status === 200 || res.status === 404, `${path}: ${res.status}`);
      if (res.status === 200) assert.equal(res.body.user, alice, path);
    }
    for (const path of ["/dev%2fwhoami", "/dev/..%2fwhoami", "/x\\..\\dev"]) {
      const res = await rawGet(url, path, "alice-token");
      assert.equal(res.status, 400, path);
    }
    const bobSaw = [...(await sandboxRequests(bob, "live")), ...(await sandboxRequests(bob, "dev"))];
    assert.ok(
      bobSaw.every((r) => r.user === null || r.user === bob),
      "bob's sandboxes saw only bob (or the health checks)",
    );
  });

  it("streams a large upload and download without buffering them whole", async () => {
    const body = randomBytes(24 * 1024 * 1024);
    const up = await getJson(`${url}/upload`, { method: "POST", body, headers: cookie("alice-token") });
    assert.equal(up.body.bytes, body.length);
    assert.equal(up.body.sha256, createHash("sha256").update(body).digest("hex"));
    const down = await fetch(`${url}/download?bytes=${48 * 1024 * 1024}`, { headers: cookie("alice-token") });
    let n = 0;
    for await (const chunk of down.body!) n += (chunk as Uint8Array).length;
    assert.equal(n, 48 * 1024 * 1024);
  });

  it("passes server-sent events through as they happen", async () => {
    const res = await fetch(`${url}/sse?n=3&interval=400`, { headers: cookie("alice-token") });
    const reader = res.body!.getReader();
    const began = Date.now();
    const first = await reader.read();
    assert.match(new TextDecoder().decode(first.value), /data: 1/);
    assert.ok(Date.now() - began < 300, "the first event is not held back until the stream ends");
    while (!(await reader.read()).done);
  });

  it("forwards 1,000 text and binary WebSocket messages each way intact and in order", async () => {
    const ws = await openWs(url, "/ws/echo", { ...cookie("alice-token"), origin });
    const received: (string | Buffer)[] = [];
    ws.on("message", (data, isBinary) => received.push(isBinary ? (data as Buffer) : data.toString()));
    const sent: (string | Buffer)[] = [];
    for (let i = 0; i < 1000; i++) {
      const m = i % 2 ? Buffer.from([i & 255, (i >> 8) & 255, 0, 255]) : `message ${i} ${"x".repeat(i % 50)}`;
      sent.push(m);
      ws.send(m);
    }
    const deadline = Date.now() + 10_000;
    while (received.length < 1000 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(received, sent);
    const pong = once(ws, "pong");
    ws.ping(Buffer.from("are you there"));
    assert.equal(String((await pong)[0]), "are you there");
    ws.close();
  });

  it("propagates close codes in both directions", async () => {
    const fromSandbox = await openWs(url, "/ws/echo", { ...cookie("alice-token"), origin });
    const closed = once(fromSandbox, "close");
    fromSandbox.send("close:4001");
    assert.equal((await closed)[0], 4001);

    const fromClient = await openWs(url, "/dev/ws/echo", { ...cookie("alice-token"), origin });
    const done = once(fromClient, "close");
    fromClient.close(4002, "bye");
    await done;
    const target = await t.daemon.services.manager.ensure(alice, "dev");
    const deadline = Date.now() + 5000;
    let logs = "";
    while (!logs.includes('"code":4002') && Date.now() < deadline) {
      logs = await logText(t.daemon.services.runtime.logs(alice, target.slot, { tail: 50, follow: false }));
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.match(logs, /"msg":"echo closed","code":4002/);
  });

  it("refuses WebSocket upgrades without a session or from a foreign origin before any byte reaches a sandbox", async () => {
    const wsEcho = `${url.replace("http", "ws")}/ws/echo`;
    const before = (await sandboxRequests(bob, "live")).filter((r) => r.upgrade).length;
    assert.equal(await upgradeStatus(wsEcho, { origin }), 401);
    assert.equal(await upgradeStatus(wsEcho, { ...cookie("bob-token"), origin: "http://evil.test" }), 403);
    assert.equal(await upgradeStatus(wsEcho, { ...cookie("bob-token") }), 403);
    assert.equal(await upgradeStatus(wsEcho, { ...cookie("alice-recovery"), origin }), 401);
    assert.equal((await sandboxRequests(bob, "live")).filter((r) => r.upgrade).length, before);
  });

  it("answers 502 when the sandbox dies under a request it cannot replay", async () => {
    const target = await t.daemon.services.manager.ensure(bob, "dev");
    const info = await t.daemon.services.runtime.inspect(bob, target.slot);
    process.kill(Number(info!.id), "SIGKILL");
    await new Promise((r) => setTimeout(r, 200));
    const res = await getJson(`${url}/dev/upload`, { method: "POST", body: "payload", headers: cookie("bob-token") });
    assert.equal(res.status, 502);
    assert.equal(res.body.error.code, "upstream_unreachable");
    const healed = await getJson(`${url}/dev/whoami`, { headers: cookie("bob-token") });
    assert.equal(healed.status, 200, "the next request starts the sandbox again");
  });
});

/**
 * The proxy in front of a test-only upstream that drops the connection under the first request
 * to each /drop/ path, and a target source that first hands out a port nobody listens on.
 */
describe("public proxy retries", () => {
  let upstream: Server;
  let server: Server;
  let proxy: PublicProxy;
  let url: string;
  const seen = new Map<string, number>();

  before(async () => {
    upstream = createServer((req, res) => {
      const key = `${req.method} ${req.url}`;
      const n = (seen.get(key) ?? 0) + 1;
      seen.set(key, n);
      // As a sandbox that crashes mid-request: the request arrived, no response ever will.
      if (n === 1 && req.url?.startsWith("/drop/")) return req.socket.destroy();
      res.end("ok");
    });
    upstream.listen(0, "127.0.0.1");
    await once(upstream, "listening");
    const endpoint = { host: "127.0.0.1", port: (upstream.address() as AddressInfo).port };
    // As a sandbox that stopped behind the manager's back: refused until the proxy says so.
    const closed = createServer();
    closed.listen(0, "127.0.0.1");
    await once(closed, "listening");
    let current = { host: "127.0.0.1", port: (closed.address() as AddressInfo).port };
    closed.close();
    proxy = new PublicProxy({
      credentials: () => ({ presented: 1, keys: [] }),
      authenticateCredentials: () => ({ user: "retry", sessionId: "s", scope: "full" }),
      targets: {
        ensure: async (user) => ({ user, slot: "a", endpoint: current, generationId: 1 }),
        current: () => undefined,
        socketOpened: () => () => undefined,
        invalidate: () => {
          current = endpoint;
        },
      },
      routes: { slotOf: () => "a", onRouteChange: () => undefined },
      app: (_req, res) => res.writeHead(404).end(),
      publicOrigin: new URL("http://hv.test"),
      trustedProxies: AddressSet.parse(""),
      log: createLogger("silent"),
      drainMs: 1000,
    });
    server = createServer(proxy.handleRequest);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => {
    proxy.close();
    server.close();
    upstream.closeAllConnections();
    upstream.close();
  });

  it("sends any bodiless request again when the connection was refused, since none was sent", async () => {
    const response = await rawRequest(url, "POST /refused HTTP/1.1\r\nHost: hv.test\r\nConnection: close\r\n\r\n");
    assert.match(response, /^HTTP\/1\.1 200 /);
    assert.equal(seen.get("POST /refused"), 1);
  });

  it("sends a bodiless GET, HEAD or OPTIONS again after a socket error, and never a POST, PUT, PATCH or DELETE", async () => {
    // RFC 9110 §9.2.2: a proxy must not retry a request that is not idempotent on its own; only
    // the safe methods (§9.2.1) are retried, as the sandbox may have acted on the others.
    for (const method of ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]) {
      const path = `/drop/${method.toLowerCase()}`;
      // Raw, so no client adds Content-Length: 0 and every request is bodiless.
      const response = await rawRequest(url, `${method} ${path} HTTP/1.1\r\nHost: hv.test\r\nConnection: close\r\n\r\n`);
      const retried = ["GET", "HEAD", "OPTIONS"].includes(method);
      assert.equal(seen.get(`${method} ${path}`), retried ? 2 : 1, `${method} reached the upstream this often`);
      assert.match(response, retried ? /^HTTP\/1\.1 200 / : /^HTTP\/1\.1 502 /, method);
    }
  });
});

/**
 * Sends `text` as is on a fresh connection and returns everything the server answered until it
 * closed. No half-close: Node's server would abort a request whose client has ended its side.
 */
function rawRequest(url: string, text: string): Promise<string> {
  const socket = connect(Number(new URL(url).port), "127.0.0.1");
  let out = "";
  socket.on("data", (c: Buffer) => (out += c.toString("latin1")));
  socket.write(text);
  return new Promise((resolve, reject) => {
    socket.on("error", reject);
    socket.on("close", () => resolve(out));
  });
}

/** A GET with the path and headers exactly as given (fetch would normalise them). */
function rawGet(url: string, path: string, token: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  const { port } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, headers: { cookie: `hv_session=${token}`, ...headers } }, (res) => {
      let body = "";
      res.on("data", (c: Buffer) => (body += c.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}
