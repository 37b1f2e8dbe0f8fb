import type { IncomingHttpHeaders } from "node:http";
import { HypervisorError } from "../hypervisor/errors.js";
import { fullSession, type AuthGate, type SessionCredentials } from "./auth-gate.js";
import { expiredCookies, parseCookies, SESSION_COOKIE, type RequestCookies } from "./cookies.js";
import { isReserved, normalizePath, routeOf } from "./request-path.js";
import { LAUNCH_PATH, type SandboxGate, type SandboxHost, type SandboxOrigins } from "./sandbox-origins.js";
import type { Role } from "./target.js";

/** What a request is routed on: its method, target and a few header fields; the rest never matters. */
export interface RoutedRequest {
  method?: string | undefined;
  url?: string | undefined;
  headers: Pick<IncomingHttpHeaders, "host" | "cookie" | "accept" | "origin"> & { "service-worker"?: string | string[] | undefined };
  /** The connection it came on: the Cookie header's reading is kept per connection while it stays the same. */
  socket?: object;
}

/** Where a request goes (DESIGN §4), decided once, by `RoutingDecision.decide`, for HTTP and WebSocket alike. */
export type Verdict =
  /** A reserved path: the hypervisor's own routes answer it. */
  | { kind: "app" }
  /** A sandbox origin's launch path: a one-time code to turn into its hv_sandbox cookie. */
  | { kind: "launch"; host: SandboxHost; query: string }
  /**
   * Somewhere else first. `role` when it stands for that sandbox's traffic (counted as such);
   * `setCookie` expires tossed session cookies.
   */
  | { kind: "redirect"; status: 302 | 308; location: string; role?: Role; setCookie?: string[] }
  | Refusal
  | SandboxVerdict;

/** Refused before any byte reaches a sandbox. `page: false`: JSON even for a browser. */
export interface Refusal {
  kind: "refuse";
  error: HypervisorError;
  page: boolean;
  setCookie?: string[];
  /** More response header fields, e.g. Clear-Site-Data. */
  headers?: Record<string, string>;
}

/** To a user's sandbox: what forwarding needs, and nothing it would have to work out again. */
export interface SandboxVerdict {
  kind: "sandbox";
  user: string;
  role: Role;
  /** The session it speaks for: a WebSocket lives no longer than it. */
  sessionId: string;
  /** The path the sandbox receives, with the query. */
  path: string;
  /** The Cookie header read: the sandbox gets the cookies that are not ours. */
  cookies: RequestCookies;
  /** X-Forwarded-Host: the sandbox origin's host as the browser named it, or the public origin's. */
  forwardedHost: string;
}

/** What the decision reads besides the request: the sessions, the public origin, sandbox origins if set. */
export interface RoutingRules extends AuthGate {
  publicOrigin: URL;
  /** Sandbox origins (DESIGN §4): set, sandboxes are served there and never on the public origin. */
  sandboxes?: { origins: SandboxOrigins; gate: SandboxGate };
}

/** A Cookie header, read for forwarding and prepared for the session check. */
interface CookieReading {
  header: string | undefined;
  cookies: RequestCookies;
  credentials: SessionCredentials;
}

/**
 * The one routing decision of the public listener (configurable-http-proxy's `targetForReq`):
 * a request in, a verdict out, shared by the HTTP and the WebSocket forwarders so the rules are
 * written once. It sends nothing and changes nothing: it reads the session store and spends no
 * launch code (the launch verdict leaves that to the forwarder).
 */
export class RoutingDecision {
  private readonly secure: boolean;
  /** A browser sends the same Cookie header on every request of a keep-alive connection: read once. */
  private readonly readings = new WeakMap<object, CookieReading>();

  constructor(private readonly rules: RoutingRules) {
    this.secure = rules.publicOrigin.protocol === "https:";
  }

  /** `upgrade`: a WebSocket handshake (already checked as one): a sandbox or a refusal, never a redirect. */
  decide(req: RoutedRequest, upgrade: true): SandboxVerdict | Refusal;
  decide(req: RoutedRequest, upgrade: false): Verdict;
  decide(req: RoutedRequest, upgrade: boolean): Verdict {
    const normalized = normalizePath(req.url);
    if (!normalized.ok) return refuse("bad_request", normalized.reason);
    const { path, query } = normalized;
    const sandboxes = this.rules.sandboxes;
    // Routed by Host before anything else: a sandbox origin serves its sandbox and nothing of ours.
    const host = sandboxes?.origins.hostOf(req.headers.host);
    if (host === "unknown") return refuse("not_found", upgrade ? NO_WEBSOCKET : "no sandbox has this origin");
    if (host) return this.onSandboxOrigin(req, upgrade, host, path, query);
    if (isReserved(path)) return upgrade ? refuse("not_found", NO_WEBSOCKET) : { kind: "app" };
    if (sandboxes) {
      // With sandbox origins the public origin serves no sandbox: pages are sent to their origin.
      if (upgrade) return refuse("not_found", NO_WEBSOCKET);
      const { role, upstreamPath } = routeOf(path);
      if (wantsHtml(req)) return { kind: "redirect", status: 302, location: sandboxes.origins.launchUrl(role, upstreamPath + query) };
      return refuse("not_found", "sandboxes are served from their own origins; open them from your account page");
    }
    // A sandbox's service worker on the public origin would control every page of it, the
    // account pages among them, for whoever signs in next on that browser.
    if (req.headers["service-worker"] === "script") return NO_SERVICE_WORKER;
    // Cross-site WebSocket hijacking: a browser sends the cookie with any origin's upgrade.
    if (upgrade && req.headers.origin !== this.rules.publicOrigin.origin) return wrongOrigin(this.rules.publicOrigin.origin);
    const reading = this.cookiesOf(req);
    const session = fullSession(this.rules, reading.credentials);
    if (!session) return this.anonymous(req, upgrade, reading.cookies, path, query);
    // The page resolves relative URLs against its own; `/dev` must become `/dev/` to stay on dev.
    if (!upgrade && path === "/dev" && (req.method === "GET" || req.method === "HEAD")) {
      return { kind: "redirect", status: 308, location: `/dev/${query}`, role: "dev" };
    }
    const { role, upstreamPath } = routeOf(path);
    const { user, sessionId } = session;
    return { kind: "sandbox", user, role, sessionId, path: upstreamPath + query, cookies: reading.cookies, forwardedHost: this.rules.publicOrigin.host };
  }

  /** A sandbox origin: its one launch path, and otherwise its sandbox for the hv_sandbox cookie it was issued, paths unchanged. */
  private onSandboxOrigin(req: RoutedRequest, upgrade: boolean, host: SandboxHost, path: string, query: string): Verdict {
    const { origins, gate } = this.rules.sandboxes!;
    if (upgrade) {
      const expected = origins.originOf(host);
      if (req.headers.origin !== expected) return wrongOrigin(expected);
    } else if (path === LAUNCH_PATH) {
      return { kind: "launch", host, query };
    }
    // The hv_sandbox cookie stands for the session it came from: a WebSocket is bound to that session.
    const session = gate.authenticateSandbox(req.headers.cookie, host);
    if (!session) {
      if (upgrade) return refuse("unauthorized", SIGN_IN);
      // Back through the public origin, which knows the browser's session and issues a code.
      if (wantsHtml(req)) return { kind: "redirect", status: 302, location: origins.launchUrl(host.role, path + query) };
      return refuse("unauthorized", "open this sandbox from your account page: no valid sandbox cookie");
    }
    return {
      kind: "sandbox",
      user: host.user,
      role: host.role,
      sessionId: session.sessionId,
      path: path + query,
      cookies: parseCookies(req.headers.cookie),
      // hostOf accepted the Host field as it is only because it names this sandbox origin exactly.
      forwardedHost: req.headers.host!.toLowerCase(),
    };
  }

  /** No session: a page is sent to sign in, anything else gets 401 JSON, an upgrade is refused. */
  private anonymous(req: RoutedRequest, upgrade: boolean, cookies: RequestCookies, path: string, query: string): Verdict {
    if (upgrade) return refuse("unauthorized", SIGN_IN);
    // More than one session cookie and none accepted (two different sessions, DESIGN §5): expire
    // them, or a tossed cookie would keep this browser signed out of these paths after sign-in.
    const setCookie = cookies.sessions.length > 1 ? expiredCookies(SESSION_COOKIE, path, this.rules.publicOrigin.hostname, this.secure) : undefined;
    if (wantsHtml(req))
      return { kind: "redirect", status: 302, location: `/login?next=${encodeURIComponent(path + query)}`, ...(setCookie ? { setCookie } : {}) };
    return { kind: "refuse", error: new HypervisorError("unauthorized", SIGN_IN), page: false, ...(setCookie ? { setCookie } : {}) };
  }

  private cookiesOf(req: RoutedRequest): CookieReading {
    const header = req.headers.cookie;
    let reading = req.socket && this.readings.get(req.socket);
    if (!reading || reading.header !== header) {
      reading = { header, cookies: parseCookies(header), credentials: this.rules.credentials(header) };
      if (req.socket) this.readings.set(req.socket, reading);
    }
    return reading;
  }
}

const NO_WEBSOCKET = "no WebSocket endpoint here";

/**
 * The answer to a browser fetching a service worker's script from a sandbox path (the
 * `Service-Worker: script` field, W3C Service Workers §"Update" step "fetch"). It arrives when a
 * page tries to register one, and when a browser checks a worker registered before this refusal
 * for updates (on navigations, and at least daily), which no worker can intercept. Clear-Site-Data
 * "storage" (W3C Clear Site Data §3.1) then removes every registration of the origin with the
 * origin's storage. Sandboxes on their own origins (HYPERVISOR_SANDBOX_DOMAIN) may have workers.
 */
const NO_SERVICE_WORKER: Refusal = {
  kind: "refuse",
  error: new HypervisorError(
    "forbidden",
    "sandboxes cannot register service workers on the public origin: a worker there would control the account pages. Serve sandboxes from their own origins (HYPERVISOR_SANDBOX_DOMAIN) to use one",
  ),
  page: false,
  headers: { "clear-site-data": '"storage"' },
};
const SIGN_IN = "sign in first: no valid session";

function refuse(code: "bad_request" | "not_found" | "unauthorized", message: string): Refusal {
  return { kind: "refuse", error: new HypervisorError(code, message), page: true };
}

function wrongOrigin(expected: string): Refusal {
  return { kind: "refuse", error: new HypervisorError("forbidden", `WebSocket upgrades here must come from ${expected}`), page: true };
}

/** A browser navigating to a page, which a redirect can help; anything else gets JSON. */
export function wantsHtml(req: RoutedRequest): boolean {
  return (req.method === "GET" || req.method === "HEAD") && /\btext\/html\b/.test(req.headers.accept ?? "");
}
