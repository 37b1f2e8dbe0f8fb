import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, request, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { createLogger } from "../../hypervisor/logger.js";
import { AddressSet } from "../../proxy/addresses.js";
import { PublicProxy, type ProxyDeps } from "../../proxy/public-proxy.js";
import { SandboxOrigins } from "../../proxy/sandbox-origins.js";

/**
 * The audit's F8: on the public origin (path mode) a sandbox shares the origin with the account
 * pages, so nothing it answers may act on the whole origin. A real proxy on a real socket, in
 * front of an upstream that answers as a hostile sandbox would.
 */
describe("service workers and origin-wide fields from sandboxes", () => {
  let upstream: Server;
  const proxies: { proxy: PublicProxy; server: Server }[] = [];
  let pathMode: string;
  let originMode: string;
  const scripts: string[] = [];

  async function serve(extra: Partial<ProxyDeps>): Promise<string> {
    const endpoint = { host: "127.0.0.1", port: (upstream.address() as AddressInfo).port };
    const proxy = new PublicProxy({
      credentials: () => ({ presented: 1, keys: ["k"] }),
      authenticateCredentials: () => ({ user: "mallory", sessionId: "s", scope: "full" }),
      targets: {
        ensure: async (user) => ({ user, slot: "a", endpoint, generationId: 1 }),
        current: (user) => ({ user, slot: "a", endpoint, generationId: 1 }),
        socketOpened: () => () => undefined,
        invalidate: () => undefined,
      },
      routes: { slotOf: () => "a", onRouteChange: () => undefined },
      app: (_req, res) => res.writeHead(404).end(),
      publicOrigin: new URL("http://localhost:8080"),
      trustedProxies: AddressSet.parse(""),
      log: createLogger("silent"),
      drainMs: 1000,
      ...extra,
    });
    const server = createServer(proxy.handleRequest);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    proxies.push({ proxy, server });
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  before(async () => {
    upstream = createServer((req, res) => {
      if (req.headers["service-worker"] === "script") scripts.push(req.url ?? "");
      res.writeHead(200, {
        "content-type": "text/javascript",
        "service-worker-allowed": "/",
        "clear-site-data": '"cookies", "storage"',
        "x-kept": "yes",
      });
      res.end("self.addEventListener('fetch', () => {});");
    });
    upstream.listen(0, "127.0.0.1");
    await once(upstream, "listening");
    pathMode = await serve({});
    const publicOrigin = new URL("http://localhost:8080");
    originMode = await serve({
      publicOrigin,
      sandboxes: {
        origins: new SandboxOrigins(publicOrigin, "localhost"),
        gate: {
          authenticateSandbox: (_header, host) => ({ user: host.user, sessionId: "s", scope: "full" }),
          redeemLaunch: () => undefined,
        },
      },
    });
  });
  after(() => {
    for (const { proxy, server } of proxies) {
      proxy.close();
      server.close();
    }
    upstream.closeAllConnections();
    upstream.close();
  });

  it("drops Service-Worker-Allowed and Clear-Site-Data from a sandbox's responses on the public origin", async () => {
    for (const path of ["/app.js", "/dev/app.js"]) {
      const res = await fetch(`${pathMode}${path}`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("service-worker-allowed"), null, path);
      assert.equal(res.headers.get("clear-site-data"), null, path);
      assert.equal(res.headers.get("x-kept"), "yes", "other fields pass");
      await res.text();
    }
  });

  it("refuses a service worker's script from a sandbox path with 403, a reason, and Clear-Site-Data for a worker registered before", async () => {
    scripts.length = 0;
    for (const path of ["/sw.js", "/dev/sw.js?v=2"]) {
      const res = await fetch(`${pathMode}${path}`, { headers: { "service-worker": "script", accept: "*/*" } });
      assert.equal(res.status, 403, path);
      const body = (await res.json()) as { error: { code: string; message: string; requestId: string } };
      assert.equal(body.error.code, "forbidden");
      assert.match(body.error.message, /service workers/);
      assert.equal(typeof body.error.requestId, "string");
      assert.equal(res.headers.get("clear-site-data"), '"storage"', "a stray worker is removed at its next update check");
    }
    assert.deepEqual(scripts, [], "no byte of it reached the sandbox");
  });

  it("leaves both to a sandbox on its own origin, where they reach nothing but that sandbox", async () => {
    // fetch() sets Host itself: node:http sends the sandbox origin's.
    const res = await new Promise<IncomingMessage>((resolve, reject) =>
      request(`${originMode}/sw.js`, { headers: { host: "live-mallory.localhost:8080", "service-worker": "script" } }, resolve)
        .on("error", reject)
        .end(),
    );
    res.resume();
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers["service-worker-allowed"], "/");
    assert.equal(res.headers["clear-site-data"], '"cookies", "storage"');
  });
});
