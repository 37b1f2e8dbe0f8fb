import { randomUUID } from "node:crypto";
import type { IncomingMessage, RequestListener, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import type { Dispatcher } from "undici";
import { asHypervisorError, HypervisorError, renderError } from "../hypervisor/errors.js";
import type { AddressSet } from "./addresses.js";
import { fullSession, type SessionCredentials } from "./auth-gate.js";
import { expiredCookies, parseCookies, sandboxCookie, SESSION_COOKIE, type RequestCookies } from "./cookies.js";
import { clientAddressOf, downstreamRawHeaders, upstreamRequestHeaders, type ForwardContext } from "./headers.js";
import { isReserved, normalizePath, routeOf } from "./request-path.js";
import { LAUNCH_PATH, type SandboxHost } from "./sandbox-origins.js";
import type { Role, RouteSource, Target } from "./target.js";
import { UpstreamPools } from "./upstream-pools.js";
import { WebSocketForwarder, type WebSocketDeps } from "./ws-forward.js";

/** What the data plane needs of the control plane: nothing more, so it never reaches SQLite or Podman. */
export interface ProxyDeps extends WebSocketDeps {
  routes: RouteSource;
  /** How long WebSockets may stay on a replaced target after a swap (HYPERVISOR_DRAIN_MS). */
  drainMs: number;
  /** The hypervisor's own routes (pages, /auth, /_hv). */
  app: RequestListener;
  log: Logger;
  /** Peers whose X-Forwarded-For is believed (HYPERVISOR_TRUSTED_PROXIES). */
  trustedProxies: AddressSet;
  /**
   * Called once per authenticated proxied request when its response is done: the status sent
   * (499 when it never completed: the client went away or the upstream broke mid-body) and the
   * seconds since it arrived. Optional, so the data plane never depends on the metrics module.
   */
  observe?: (role: Role, status: number, seconds: number) => void;
  /** Pages for browsers (Accept: text/html). Optional: without them every refusal is JSON. */
  pages?: BrowserPages;
}

/** A page the proxy sends a browser: its body and the headers it needs (content type, CSP). */
export interface ProxyPage {
  body: string;
  headers: Record<string, string>;
}

/** What a browser gets instead of JSON: pages the control plane renders. */
export interface BrowserPages {
  /** A readable refusal; status and Retry-After stay those of the JSON error. */
  error(err: HypervisorError, requestId: string): ProxyPage;
  /** While the sandbox starts: a page that follows the start and reloads once it is healthy. */
  starting(user: string, role: Role, started: Promise<Target>): ProxyPage;
}

/**
 * Socket errors after which a bodiless request may be sent again: a pooled keep-alive socket
 * turned out dead. The sandbox may have acted on the request before it died, and a proxy must
 * not repeat one that is not idempotent (RFC 9110 §9.2.2), so these are retried only for the
 * safe methods (§9.2.1). A refused connection carried no request: any method is sent again.
 */
const RETRYABLE = new Set(["ECONNRESET", "EPIPE", "UND_ERR_SOCKET", "UND_ERR_CLOSED"]);
const RETRY_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

/**
 * A connection's last Cookie header, read: parsed for forwarding and prepared for the session
 * check. Reused while the header is the same string; the session itself is checked every time.
 */
interface CookieMemo {
  header: string | undefined;
  cookies: RequestCookies;
  credentials: SessionCredentials;
}

/**
 * The public listener's request handling: reserved paths go to Hono, everything else is
 * authenticated, routed to the user's live or dev sandbox and streamed through without
 * buffering. It bypasses Hono's Request/Response conversion on purpose: this is the hot path.
 */
export class PublicProxy {
  private readonly upstreams = new UpstreamPools();
  readonly websockets: WebSocketForwarder;

  private readonly drains = new Set<NodeJS.Timeout>();
  private readonly proto: string;
  private readonly cookieMemos = new WeakMap<Duplex, CookieMemo>();

  constructor(private readonly deps: ProxyDeps) {
    this.proto = deps.publicOrigin.protocol.replace(":", "");
    this.websockets = new WebSocketForwarder(deps, (t) => this.context(t));
    deps.routes.onRouteChange((user) => this.drainAfterSwap(user));
  }

  /**
   * In-flight HTTP requests finish on the target they started on by themselves; WebSockets
   * routed by the old mapping get the drain window, then close with 1012 "Service Restart"
   * (RFC 6455 §7.4.1, IANA registry) so clients reconnect to the new target.
   */
  private drainAfterSwap(user: string): void {
    const stale = (target: Target, role: Role) => target.user === user && this.deps.routes.slotOf(user, role) !== target.slot;
    // Exactly the sockets this swap made stale get the full window; a later swap drains its own.
    const draining = this.websockets.select(stale);
    if (draining.size === 0) return;
    const timer = setTimeout(() => {
      this.drains.delete(timer);
      // Still stale: a swap back within the window makes a socket current again.
      const closed = this.websockets.closeWhere((target, role, bridge) => draining.has(bridge) && stale(target, role), 1012, "swapped");
      if (closed) this.deps.log.info({ user, closed }, "drained websockets after swap");
    }, this.deps.drainMs);
    timer.unref();
    this.drains.add(timer);
  }

  readonly handleRequest: RequestListener = (req, res) => {
    const arrived = this.deps.observe ? performance.now() : 0;
    const verdict = normalizePath(req.url);
    if (!verdict.ok) return this.fail(req, res, new HypervisorError("bad_request", verdict.reason));
    const sandboxes = this.deps.sandboxes;
    if (sandboxes) {
      // Routed by Host before anything else: a sandbox origin serves its sandbox and nothing of ours.
      const host = sandboxes.origins.hostOf(req.headers.host);
      if (host === "unknown") return this.fail(req, res, new HypervisorError("not_found", "no sandbox has this origin"));
      if (host) return this.serveSandboxOrigin(req, res, host, verdict.path, verdict.query, arrived);
    }
    if (isReserved(verdict.path)) return this.deps.app(req, res);
    if (sandboxes) return this.toSandboxOrigin(req, res, verdict.path, verdict.query);
    const memo = this.cookiesOf(req);
    const session = fullSession(this.deps, memo.credentials);
    if (!session) return this.refuseAnonymous(req, res, memo.cookies, verdict.path, verdict.query);
    const { user } = session;
    const { role, upstreamPath } = routeOf(verdict.path);
    if (this.deps.observe) this.observeResponse(res, role, arrived, this.deps.observe);
    // The page resolves relative URLs against its own; `/dev` must become `/dev/` to stay on dev.
    if (verdict.path === "/dev" && (req.method === "GET" || req.method === "HEAD")) {
      res.writeHead(308, { location: `/dev/${verdict.query}` }).end();
      return;
    }
    this.forward(req, res, user, role, upstreamPath + verdict.query, memo.cookies);
  };

  private cookiesOf(req: IncomingMessage): CookieMemo {
    const header = req.headers.cookie;
    let memo = this.cookieMemos.get(req.socket);
    if (!memo || memo.header !== header) {
      memo = { header, cookies: parseCookies(header), credentials: this.deps.credentials(header) };
      this.cookieMemos.set(req.socket, memo);
    }
    return memo;
  }

  readonly handleUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    // A fault in one upgrade must cost that socket, never the process (an unhandled rejection).
    this.websockets.handle(req, socket, head).catch((err: unknown) => {
      this.deps.log.error({ err }, "websocket upgrade failed");
      socket.destroy();
    });
  };

  /**
   * The daemon is stopping: WebSockets close with 1012 "Service Restart" (RFC 6455 §7.4.1, IANA
   * registry) so their clients reconnect, to the next daemon; HTTP is still forwarded until close().
   */
  closeWebSockets(): void {
    for (const timer of this.drains) clearTimeout(timer);
    this.websockets.closeAll(1012);
  }

  close(): void {
    this.closeWebSockets();
    this.upstreams.close();
  }

  context(req: IncomingMessage): ForwardContext {
    // hostOf accepted the Host field as it is only when it names a sandbox origin exactly.
    const onSandboxOrigin = typeof this.deps.sandboxes?.origins.hostOf(req.headers.host) === "object";
    return {
      clientAddress: clientAddressOf(req.socket.remoteAddress, req.headers["x-forwarded-for"], this.deps.trustedProxies),
      proto: this.proto,
      host: onSandboxOrigin ? req.headers.host!.toLowerCase() : this.deps.publicOrigin.host,
    };
  }

  /** A sandbox origin: its one launch path, and otherwise its sandbox for the hv_sandbox cookie it was issued. */
  private serveSandboxOrigin(req: IncomingMessage, res: ServerResponse, host: SandboxHost, path: string, query: string, arrived: number): void {
    const { origins, gate } = this.deps.sandboxes!;
    if (path === LAUNCH_PATH) return this.redeemLaunch(req, res, host, query);
    if (!gate.authenticateSandbox(req.headers.cookie, host)) {
      // Back through the public origin, which knows the browser's session and issues a code.
      if (wantsHtml(req)) {
        res.writeHead(302, { location: origins.launchUrl(host.role, path + query), "cache-control": "no-store" }).end();
        return;
      }
      return this.fail(req, res, new HypervisorError("unauthorized", "open this sandbox from your account page: no valid sandbox cookie"));
    }
    if (this.deps.observe) this.observeResponse(res, host.role, arrived, this.deps.observe);
    this.forward(req, res, host.user, host.role, path + query, parseCookies(req.headers.cookie));
  }

  /**
   * `/_hv/launch?code=…` on a sandbox origin: a one-time code from the public origin becomes a
   * host-only hv_sandbox cookie (no Domain attribute, RFC 6265 §5.3 step 6, so no other host
   * ever receives it), and the browser goes on to the page it asked for. no-referrer: the code
   * is spent, but it has no business in any log.
   */
  private redeemLaunch(req: IncomingMessage, res: ServerResponse, host: SandboxHost, query: string): void {
    const code = new URLSearchParams(query.slice(1)).get("code") ?? "";
    const launched = req.method === "GET" ? this.deps.sandboxes!.gate.redeemLaunch(code, host) : undefined;
    if (!launched) {
      return this.fail(req, res, new HypervisorError("forbidden", "this launch link was used, has expired or is for another sandbox: open the sandbox again"));
    }
    res
      .writeHead(303, {
        location: launched.next,
        "set-cookie": sandboxCookie(launched.token, this.proto === "https"),
        "cache-control": "no-store",
        "referrer-policy": "no-referrer",
      })
      .end();
  }

  /** With sandbox origins the public origin serves no sandbox: pages are sent to their origin. */
  private toSandboxOrigin(req: IncomingMessage, res: ServerResponse, path: string, query: string): void {
    const { role, upstreamPath } = routeOf(path);
    if (wantsHtml(req)) {
      res.writeHead(302, { location: this.deps.sandboxes!.origins.launchUrl(role, upstreamPath + query), "cache-control": "no-store" }).end();
      return;
    }
    this.fail(req, res, new HypervisorError("not_found", "sandboxes are served from their own origins; open them from your account page"));
  }

  private observeResponse(res: ServerResponse, role: Role, arrived: number, observe: NonNullable<ProxyDeps["observe"]>): void {
    res.once("close", () => observe(role, res.writableFinished ? res.statusCode : 499, (performance.now() - arrived) / 1000));
  }

  private refuseAnonymous(req: IncomingMessage, res: ServerResponse, cookies: RequestCookies, path: string, query: string): void {
    // More than one session cookie and none accepted (two different sessions, DESIGN §5): expire
    // them, or a tossed cookie would keep this browser signed out of these paths after sign-in.
    if (cookies.sessions.length > 1) res.setHeader("set-cookie", expiredCookies(SESSION_COOKIE, path, this.deps.publicOrigin.hostname, this.proto === "https"));
    if (wantsHtml(req)) {
      res.writeHead(302, { location: `/login?next=${encodeURIComponent(path + query)}`, "cache-control": "no-store" }).end();
      return;
    }
    sendError(res, new HypervisorError("unauthorized", "sign in first: no valid session"));
  }

  /** To the running target at once; through a start (a promise) only when there is none. */
  private forward(req: IncomingMessage, res: ServerResponse, user: string, role: Role, path: string, cookies: RequestCookies, attempt = 1): void {
    const target = this.deps.targets.current(user, role);
    if (target) return this.send(req, res, target, user, role, path, cookies, attempt);
    void this.startThenSend(req, res, user, role, path, cookies, attempt);
  }

  private async startThenSend(
    req: IncomingMessage,
    res: ServerResponse,
    user: string,
    role: Role,
    path: string,
    cookies: RequestCookies,
    attempt: number,
  ): Promise<void> {
    let target: Target;
    try {
      const started = this.deps.targets.ensure(user, role);
      // A browser gets a page that follows a start rather than a blank wait of up to the start timeout.
      if (attempt === 1 && this.deps.pages && wantsHtml(req) && !(await settlesNow(started))) {
        return sendPage(res, 503, { "retry-after": "2" }, this.deps.pages.starting(user, role, started));
      }
      target = await started;
    } catch (err) {
      return this.fail(req, res, asHypervisorError(err));
    }
    this.send(req, res, target, user, role, path, cookies, attempt);
  }

  private send(
    req: IncomingMessage,
    res: ServerResponse,
    target: Target,
    user: string,
    role: Role,
    path: string,
    cookies: RequestCookies,
    attempt: number,
  ): void {
    const bodiless = req.headers["content-length"] === undefined && req.headers["transfer-encoding"] === undefined;
    const headers = upstreamRequestHeaders(req.headers, { user, role, generation: target.generationId }, this.context(req), cookies);
    let abort: ((err?: Error) => void) | undefined;
    // A client that goes away mid-request takes its upstream request with it.
    res.on("close", () => {
      if (!res.writableFinished) abort?.();
    });
    this.upstreams.dispatch(
      target.endpoint,
      {
        method: (req.method ?? "GET") as Dispatcher.HttpMethod,
        path,
        headers: headers as Record<string, string | string[]>,
        // A bodiless request has nothing to stream, which also makes a retry possible.
        body: bodiless ? null : req,
      },
      {
        onConnect: (a) => {
          abort = a;
        },
        onHeaders: (status, raw, resume) => {
          if (status < 200) return true; // informational: Node answers the client's Expect itself
          const out = downstreamRawHeaders(raw as unknown as Buffer[]);
          out.push("x-hypervisor-generation", String(target.generationId));
          res.writeHead(status, out);
          res.on("drain", resume);
          return true;
        },
        // Backpressure: a slow client pauses the sandbox's response instead of buffering it here.
        onData: (chunk) => res.write(chunk),
        onComplete: () => {
          res.end();
        },
        onError: (err: Error & { code?: string }) => {
          if (res.headersSent) return res.destroy();
          const refused = err.code === "ECONNREFUSED";
          if (attempt === 1 && bodiless && (refused || (RETRY_METHODS.has(req.method ?? "") && RETRYABLE.has(err.code ?? "")))) {
            // A dead pooled socket, or a sandbox that stopped behind our back: look again once.
            if (refused) this.deps.targets.invalidate(target);
            return this.forward(req, res, user, role, path, cookies, 2);
          }
          this.deps.log.warn({ user, role, slot: target.slot, code: err.code }, "upstream unreachable");
          this.fail(req, res, new HypervisorError("upstream_unreachable", `the ${role} sandbox did not answer`));
        },
      },
    );
  }

  /** A refusal: a readable page for a browser that asks for HTML, the JSON error otherwise. */
  private fail(req: IncomingMessage, res: ServerResponse, err: HypervisorError): void {
    const pages = this.deps.pages;
    sendError(res, err, this.deps.log, pages && /\btext\/html\b/i.test(req.headers.accept ?? "") ? (e, id) => pages.error(e, id) : undefined);
  }
}

/** Whether a promise has settled by the end of this turn: a running target's ensure() has. */
function settlesNow(p: Promise<unknown>): Promise<boolean> {
  return Promise.race([
    p.then(
      () => true,
      () => true,
    ),
    new Promise<boolean>((resolve) => setImmediate(resolve, false)),
  ]);
}

function sendPage(res: ServerResponse, status: number, headers: Record<string, string>, page: ProxyPage): void {
  res.writeHead(status, { ...headers, ...page.headers, "content-length": Buffer.byteLength(page.body) }).end(page.body);
}

/** A browser navigating to a page, which a redirect can help; anything else gets JSON. */
function wantsHtml(req: IncomingMessage): boolean {
  return (req.method === "GET" || req.method === "HEAD") && /\btext\/html\b/.test(req.headers.accept ?? "");
}

export function sendError(res: ServerResponse, err: HypervisorError, log?: Logger, page?: BrowserPages["error"]): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const requestId = randomUUID();
  if (err.status >= 500 && err.code === "internal") log?.error({ err: err.cause ?? err, requestId }, "proxy error");
  const { status, headers, body } = renderError(err, requestId);
  if (page) return sendPage(res, status, headers, page(err, requestId));
  res.writeHead(status, { ...headers, "content-length": Buffer.byteLength(body) }).end(body);
}
