import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Session } from "./auth-gate.js";
import { RoutingDecision, type RoutedRequest, type RoutingRules, type Verdict } from "./routing-decision.js";
import { SandboxOrigins, type SandboxHost } from "./sandbox-origins.js";

const sessions = new Map<string, Session>([
  ["alice-token", { user: "alice", sessionId: "alice-1", scope: "full" }],
  ["bob-token", { user: "bob", sessionId: "bob-1", scope: "full" }],
  ["alice-recovery", { user: "alice", sessionId: "alice-2", scope: "recovery" }],
]);

/** The session check as the control plane answers it: hv_session tokens, two different ones count as none. */
const gate: Pick<RoutingRules, "credentials" | "authenticateCredentials"> = {
  credentials: (header) => {
    const keys = [...(header ?? "").matchAll(/hv_session=([^;]*)/g)].map((m) => m[1]!);
    return { presented: keys.length, keys };
  },
  authenticateCredentials: ({ keys }) => {
    const found = new Set((keys ?? []).map((k) => sessions.get(k)));
    return found.size === 1 ? [...found][0] : undefined;
  },
};

const pathMode = new RoutingDecision({ ...gate, publicOrigin: new URL("http://hv.test:8080") });

const publicOrigin = new URL("http://localhost:8080");
/** hv_sandbox=<user>-<role> is a grant for that sandbox, from alice's session. */
const originMode = new RoutingDecision({
  ...gate,
  publicOrigin,
  sandboxes: {
    origins: new SandboxOrigins(publicOrigin, "localhost"),
    gate: {
      authenticateSandbox: (header, host: SandboxHost) =>
        header?.includes(`hv_sandbox=${host.user}-${host.role}`) ? { user: host.user, sessionId: `${host.user}-1`, scope: "full" } : undefined,
      redeemLaunch: () => {
        throw new Error("the decision never spends a launch code");
      },
    },
  },
});

const page = { accept: "text/html,application/xhtml+xml" };
const alice = { cookie: "theme=dark; hv_session=alice-token" };

function request(url: string, headers: RoutedRequest["headers"] = {}, method = "GET"): RoutedRequest {
  return { method, url, headers: { host: "hv.test:8080", ...headers } };
}

/** The sandbox a verdict sends to, as `user role path`, or its kind and status. */
function summary(v: Verdict): string {
  switch (v.kind) {
    case "sandbox":
      return `${v.user} ${v.role} ${v.path}`;
    case "redirect":
      return `${v.status} ${v.location}`;
    case "refuse":
      return `${v.error.status} ${v.error.code}`;
    default:
      return v.kind;
  }
}

describe("RoutingDecision, path mode (DESIGN §4)", () => {
  it("§4 /dev prefix: /dev and /dev/... reach dev with the prefix stripped, every other path live", () => {
    assert.equal(summary(pathMode.decide(request("/dev/", alice), false)), "alice dev /");
    assert.equal(summary(pathMode.decide(request("/dev/app/x.js?v=1", alice), false)), "alice dev /app/x.js?v=1");
    assert.equal(summary(pathMode.decide(request("/", alice), false)), "alice live /");
    assert.equal(summary(pathMode.decide(request("/devtools", alice), false)), "alice live /devtools");
    assert.equal(summary(pathMode.decide(request("/api/tasks?x=1", alice, "POST"), false)), "alice live /api/tasks?x=1");
  });

  it("§4 /dev prefix: a page at /dev is sent to /dev/ (so relative URLs stay on dev), counted as dev; other methods are forwarded", () => {
    const v = pathMode.decide(request("/dev?a=1", alice), false);
    assert.deepEqual(v, { kind: "redirect", status: 308, location: "/dev/?a=1", role: "dev" });
    assert.equal(summary(pathMode.decide(request("/dev", alice, "POST"), false)), "alice dev /");
    assert.equal(summary(pathMode.decide(request("/dev", { ...alice, origin: "http://hv.test:8080" }), true)), "alice dev /", "an upgrade is never redirected");
  });

  it("§4 normalisation: dot segments, encoded dots and empty segments cannot change the target", () => {
    assert.equal(summary(pathMode.decide(request("/dev/../x", alice), false)), "alice live /x");
    assert.equal(summary(pathMode.decide(request("/x/%2e%2E/dev/y", alice), false)), "alice dev /y");
    assert.equal(summary(pathMode.decide(request("//dev//./y", alice), false)), "alice dev /y");
    assert.equal(summary(pathMode.decide(request("/auth/../dev/", alice), false)), "alice dev /");
    assert.equal(summary(pathMode.decide(request("/dev/../auth/session", alice), false)), "app", "a reserved path reached by dot segments is still ours");
  });

  it("§4 normalisation: encoded slashes, backslashes, NUL and relative targets are refused 400 before routing", () => {
    for (const url of ["/dev%2f..%2fauth", "/dev\\..\\auth", "/a%5cb", "/a%00b", "/a%zz", "dev/x", "*"]) {
      assert.equal(summary(pathMode.decide(request(url, alice), false)), "400 bad_request", url);
      assert.equal(summary(pathMode.decide(request(url, alice), true)), "400 bad_request", url);
    }
  });

  it("§4 normalisation: case is not folded, so /DEV is live and /AUTH reaches the sandbox, not the reserved routes", () => {
    assert.equal(summary(pathMode.decide(request("/DEV/x", alice), false)), "alice live /DEV/x");
    assert.equal(summary(pathMode.decide(request("/AUTH/session", alice), false)), "alice live /AUTH/session");
  });

  it("§4 reserved paths: /login, /register, /recovery, /auth/*, /_hv/* are the hypervisor's, with or without a session", () => {
    for (const url of ["/login", "/register?invite=x", "/recovery", "/auth", "/auth/session", "/_hv", "/_hv/account", "/_hv/healthz"]) {
      assert.equal(pathMode.decide(request(url), false).kind, "app", url);
      assert.equal(pathMode.decide(request(url, alice), false).kind, "app", url);
    }
    for (const url of ["/login/x", "/loginx", "/authx", "/_hvx"]) assert.equal(summary(pathMode.decide(request(url, alice), false)), `alice live ${url}`);
  });

  it("§4 reserved paths: no WebSocket is served there", () => {
    const v = pathMode.decide(request("/auth/session", { ...alice, origin: "http://hv.test:8080" }), true);
    assert.equal(summary(v), "404 not_found");
  });

  it("§4 no session: a page is redirected to /login with where it was going, anything else gets 401 JSON", () => {
    assert.deepEqual(pathMode.decide(request("/some/page?x=1", page), false), {
      kind: "redirect",
      status: 302,
      location: `/login?next=${encodeURIComponent("/some/page?x=1")}`,
    });
    const api = pathMode.decide(request("/api/tasks"), false);
    assert.equal(summary(api), "401 unauthorized");
    assert.equal(api.kind === "refuse" && api.page, false, "401 JSON even when a browser asks for HTML");
    assert.equal(summary(pathMode.decide(request("/form", page, "POST"), false)), "401 unauthorized", "only a page navigation is redirected");
  });

  it("§4 no session: a recovery session, an unknown token and two different sessions are no session", () => {
    for (const cookie of ["hv_session=alice-recovery", "hv_session=forged", "hv_session=alice-token; hv_session=bob-token"]) {
      assert.equal(summary(pathMode.decide(request("/x", { cookie }), false)), "401 unauthorized", cookie);
    }
  });

  it("§5 two different sessions: the refusal expires the session cookies, or a tossed cookie would keep the browser signed out", () => {
    const v = pathMode.decide(request("/dev/x", { ...page, cookie: "hv_session=alice-token; hv_session=bob-token" }), false);
    assert.equal(v.kind, "redirect");
    const lines = v.kind === "redirect" ? (v.setCookie ?? []) : [];
    assert.ok(
      lines.some((l) => l.startsWith("hv_session=; Path=/;") && l.includes("Max-Age=0")),
      lines.join("\n"),
    );
    assert.ok(lines.some((l) => l.startsWith("hv_session=; Path=/dev;")));
    assert.equal(pathMode.decide(request("/x", { cookie: "hv_session=forged" }), false).kind === "refuse", true);
    const single = pathMode.decide(request("/x", { cookie: "hv_session=forged" }), false);
    assert.equal(single.kind === "refuse" ? single.setCookie : "?", undefined, "one stale cookie is left for sign-in to replace");
  });

  it("§4 no session: a WebSocket upgrade is refused 401, never redirected", () => {
    const v = pathMode.decide(request("/ws", { ...page, origin: "http://hv.test:8080" }), true);
    assert.equal(summary(v), "401 unauthorized");
  });

  it("§4 WebSocket Origin: an upgrade must carry the public origin exactly, checked before the session", () => {
    for (const origin of [undefined, "http://evil.test", "http://hv.test", "https://hv.test:8080", "http://hv.test:8080/"]) {
      assert.equal(summary(pathMode.decide(request("/ws", { ...alice, ...(origin ? { origin } : {}) }), true)), "403 forbidden", String(origin));
    }
    assert.equal(summary(pathMode.decide(request("/dev/ws", { ...alice, origin: "http://hv.test:8080" }), true)), "alice dev /ws");
    assert.equal(pathMode.decide(request("/x", { ...alice, origin: "http://evil.test" }), false).kind, "sandbox", "plain HTTP is not held to Origin here");
  });

  it("§4 sandboxes untrusted (F8): a service worker's script is never fetched from a sandbox path, signed in or not", () => {
    for (const headers of [alice, {}]) {
      for (const url of ["/sw.js", "/dev/sw.js", "/dev"]) {
        const v = pathMode.decide(request(url, { ...headers, "service-worker": "script" }), false);
        assert.equal(summary(v), "403 forbidden", url);
        assert.deepEqual(v.kind === "refuse" && v.headers, { "clear-site-data": '"storage"' });
      }
    }
    assert.equal(pathMode.decide(request("/_hv/x.js", { "service-worker": "script" }), false).kind, "app", "reserved paths stay the app's");
  });

  it("§4 forwarding: the sandbox gets the cookies that are not ours, the public host, and the session it speaks for", () => {
    const v = pathMode.decide(request("/x", { cookie: "theme=dark; hv_session=alice-token; lang=en" }), false);
    assert.equal(v.kind, "sandbox");
    if (v.kind !== "sandbox") return;
    assert.equal(v.cookies.forwarded, "theme=dark; lang=en");
    assert.equal(v.forwardedHost, "hv.test:8080");
    assert.equal(v.sessionId, "alice-1");
  });

  it("reads a connection's Cookie header once while it stays the same, and again when it changes", () => {
    let reads = 0;
    const counting = new RoutingDecision({
      ...gate,
      credentials: (header) => {
        reads++;
        return gate.credentials(header);
      },
      publicOrigin: new URL("http://hv.test:8080"),
    });
    const socket = {};
    for (let i = 0; i < 3; i++) counting.decide({ ...request("/x", alice), socket }, false);
    assert.equal(reads, 1);
    assert.equal(summary(counting.decide({ ...request("/x", { cookie: "hv_session=bob-token" }), socket }, false)), "bob live /x");
    assert.equal(reads, 2);
  });
});

describe("RoutingDecision, sandbox-origin mode (DESIGN §4)", () => {
  const on = (host: string, url: string, headers: RoutedRequest["headers"] = {}, method = "GET") => request(url, { ...headers, host }, method);
  const live = "live-alice.localhost:8080";
  const grant = { cookie: "hv_sandbox=alice-live; theme=dark" };

  it("§4 sandbox origins: live-<user>.<domain> is that sandbox for its hv_sandbox cookie, paths unchanged (no /dev prefix)", () => {
    assert.equal(summary(originMode.decide(on(live, "/dev/x?y=1", grant), false)), "alice live /dev/x?y=1");
    assert.equal(summary(originMode.decide(on("DEV-Alice.localhost:8080", "/", { cookie: "hv_sandbox=alice-dev" }), false)), "alice dev /");
    const v = originMode.decide(on("LIVE-alice.LOCALHOST:8080", "/", grant), false);
    assert.equal(v.kind === "sandbox" && v.forwardedHost, "live-alice.localhost:8080", "X-Forwarded-Host is the sandbox origin's, lowercased");
  });

  it("§4 sandbox origins: nothing of /auth/* or the account pages is served there; those paths reach the sandbox", () => {
    for (const url of ["/auth/session", "/_hv/account", "/login"]) assert.equal(summary(originMode.decide(on(live, url, grant), false)), `alice live ${url}`);
  });

  it("§4 sandbox origins: /_hv/launch is the one path answered there, and the decision leaves the code unspent", () => {
    assert.deepEqual(originMode.decide(on(live, "/_hv/launch?code=abc"), false), { kind: "launch", host: { user: "alice", role: "live" }, query: "?code=abc" });
  });

  it("§4 sandbox origins: a grant for another user or role is no grant; a page goes back through the public origin's launch", () => {
    const other = originMode.decide(on("live-bob.localhost:8080", "/a?b=1", { ...grant, ...page }), false);
    assert.deepEqual(other, { kind: "redirect", status: 302, location: "http://localhost:8080/_hv/launch?role=live&next=%2Fa%3Fb%3D1" });
    assert.equal(summary(originMode.decide(on("dev-alice.localhost:8080", "/api", grant), false)), "401 unauthorized");
    assert.equal(summary(originMode.decide(on(live, "/", alice), false)), "401 unauthorized", "the public origin's session is not a grant");
  });

  it("§4 sandbox origins: a host in the domain naming no sandbox, or on another port, is 404", () => {
    for (const host of ["foo.localhost:8080", "live-alice.localhost:9090", "live-alice.localhost", "x.live-alice.localhost:8080"]) {
      assert.equal(summary(originMode.decide(on(host, "/", grant), false)), "404 not_found", host);
      assert.equal(summary(originMode.decide(on(host, "/", { ...grant, origin: `http://${host}` }), true)), "404 not_found", host);
    }
  });

  it("§4 sandbox origins: the public origin serves no sandbox; a page is sent to the sandbox's launch, anything else is 404", () => {
    assert.deepEqual(originMode.decide(on("localhost:8080", "/dev/app?x=1", { ...alice, ...page }), false), {
      kind: "redirect",
      status: 302,
      location: "http://localhost:8080/_hv/launch?role=dev&next=%2Fapp%3Fx%3D1",
    });
    assert.equal(summary(originMode.decide(on("localhost:8080", "/api", alice), false)), "404 not_found");
    assert.equal(summary(originMode.decide(on("localhost:8080", "/ws", { ...alice, origin: "http://localhost:8080" }), true)), "404 not_found");
    assert.equal(originMode.decide(on("localhost:8080", "/_hv/account", alice), false).kind, "app", "its own routes stay");
  });

  it("§4 WebSocket Origin on a sandbox origin: the upgrade must come from that sandbox's own origin", () => {
    const ws = (origin: string) => originMode.decide(on(live, "/ws", { ...grant, origin }), true);
    assert.equal(summary(ws("http://live-alice.localhost:8080")), "alice live /ws");
    for (const origin of ["http://localhost:8080", "http://dev-alice.localhost:8080", "http://live-bob.localhost:8080"])
      assert.equal(summary(ws(origin)), "403 forbidden");
    const anonymous = originMode.decide(on(live, "/ws", { origin: "http://live-alice.localhost:8080" }), true);
    assert.equal(summary(anonymous), "401 unauthorized", "an upgrade without a grant is refused, never redirected");
  });

  it("§4 sandbox origins: a sandbox on its own origin may have a service worker, which reaches nothing but it", () => {
    assert.equal(summary(originMode.decide(on(live, "/sw.js", { ...grant, "service-worker": "script" }), false)), "alice live /sw.js");
  });

  it("§4 normalisation applies on sandbox origins too", () => {
    assert.equal(summary(originMode.decide(on(live, "/a/../b/./c", grant), false)), "alice live /b/c");
    assert.equal(summary(originMode.decide(on(live, "/a%2f..", grant), false)), "400 bad_request");
  });
});
