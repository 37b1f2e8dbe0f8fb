import { randomUUID } from "node:crypto";
import type { IncomingMessage, RequestListener, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import type { Dispatcher } from "undici";
import { asHypervisorError, HypervisorError, renderError } from "../hypervisor/errors.js";
import { sandboxCookie } from "./cookies.js";
import { downstreamRawHeaders, forwardContext, ORIGIN_WIDE, upstreamRequestHeaders } from "./headers.js";
import { RoutingDecision, wantsHtml, type SandboxVerdict } from "./routing-decision.js";
import type { SandboxHost } from "./sandbox-origins.js";
import type { Role, Target } from "./target.js";
import { UpstreamPools } from "./upstream-pools.js";
import { UserLimits } from "./user-limits.js";
import { WebSocketForwarder, type WebSocketDeps } from "./ws-forward.js";

/** What the data plane needs of the control plane: nothing more, so it never reaches SQLite or Podman. */
export interface ProxyDeps extends WebSocketDeps {
  /** The hypervisor's own routes (pages, /auth, /_hv). */
  app: RequestListener;
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
 * The public listener's request handling: reserved paths go to Hono, everything else is
 * authenticated, routed to the user's live or dev sandbox and streamed through without
 * buffering. It bypasses Hono's Request/Response conversion on purpose: this is the hot path.
 */
export class PublicProxy {
  private readonly upstreams = new UpstreamPools();
  private readonly routing: RoutingDecision;
  private readonly limits: UserLimits;
  readonly websockets: WebSocketForwarder;
  private readonly proto: string;
  /** What a sandbox's responses may not carry: on the public origin (path mode), the origin-wide fields. */
  private readonly dropped: ReadonlySet<string> | undefined;

  constructor(private readonly deps: ProxyDeps) {
    this.proto = deps.publicOrigin.protocol.replace(":", "");
    this.dropped = deps.sandboxes ? undefined : ORIGIN_WIDE;
    this.routing = new RoutingDecision(deps);
    this.limits = new UserLimits(deps.userLimits ?? { requests: Infinity, websockets: Infinity });
    this.websockets = new WebSocketForwarder(deps, this.routing, this.limits);
  }

  readonly handleRequest: RequestListener = (req, res) => {
    const arrived = this.deps.observe ? performance.now() : 0;
    const verdict = this.routing.decide(req, false);
    switch (verdict.kind) {
      case "sandbox": {
        const release = this.limits.acquire(verdict.user, "requests");
        if (!release) return this.refuseOverLimit(req, res, verdict);
        res.once("close", release);
        if (this.deps.observe) this.observeResponse(res, verdict.role, arrived, this.deps.observe);
        return this.forward(req, res, verdict);
      }
      case "app":
        return this.deps.app(req, res);
      case "launch":
        return this.redeemLaunch(req, res, verdict.host, verdict.query);
      case "redirect":
        if (verdict.role && this.deps.observe) this.observeResponse(res, verdict.role, arrived, this.deps.observe);
        if (verdict.setCookie) res.setHeader("set-cookie", verdict.setCookie);
        // A 302 depends on who asks (signed in or not, which sandbox): never kept by a cache.
        res
          .writeHead(verdict.status, verdict.status === 302 ? { location: verdict.location, "cache-control": "no-store" } : { location: verdict.location })
          .end();
        return;
      case "refuse":
        if (verdict.setCookie) res.setHeader("set-cookie", verdict.setCookie);
        if (verdict.headers) for (const [name, value] of Object.entries(verdict.headers)) res.setHeader(name, value);
        return verdict.page ? this.fail(req, res, verdict.error) : sendError(res, verdict.error);
    }
  };

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
    this.websockets.closeAll(1012);
  }

  close(): void {
    this.closeWebSockets();
    this.upstreams.close();
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

  /** Past the user's bound on requests in flight: refused before the sandbox hears of it. */
  private refuseOverLimit(req: IncomingMessage, res: ServerResponse, to: SandboxVerdict): void {
    this.deps.onLimited?.(to.user, "requests", forwardContext(req, to.forwardedHost, this.proto, this.deps.trustedProxies).clientAddress);
    this.fail(req, res, this.limits.refusal("requests"));
  }

  private observeResponse(res: ServerResponse, role: Role, arrived: number, observe: NonNullable<ProxyDeps["observe"]>): void {
    res.once("close", () => observe(role, res.writableFinished ? res.statusCode : 499, (performance.now() - arrived) / 1000));
  }

  /** To the running target at once; through a start (a promise) only when there is none. */
  private forward(req: IncomingMessage, res: ServerResponse, to: SandboxVerdict, attempt = 1): void {
    const target = this.deps.targets.current(to.user, to.role);
    if (target) return this.send(req, res, target, to, attempt);
    void this.startThenSend(req, res, to, attempt);
  }

  private async startThenSend(req: IncomingMessage, res: ServerResponse, to: SandboxVerdict, attempt: number): Promise<void> {
    let target: Target;
    try {
      const started = this.deps.targets.ensure(to.user, to.role);
      // A browser gets a page that follows a start rather than a blank wait of up to the start timeout.
      if (attempt === 1 && this.deps.pages && wantsHtml(req) && !(await settlesNow(started))) {
        return sendPage(res, 503, { "retry-after": "2" }, this.deps.pages.starting(to.user, to.role, started));
      }
      target = await started;
    } catch (err) {
      return this.fail(req, res, asHypervisorError(err));
    }
    this.send(req, res, target, to, attempt);
  }

  private send(req: IncomingMessage, res: ServerResponse, target: Target, to: SandboxVerdict, attempt: number): void {
    const { user, role } = to;
    const bodiless = req.headers["content-length"] === undefined && req.headers["transfer-encoding"] === undefined;
    const headers = upstreamRequestHeaders(
      req.headers,
      { user, role, generation: target.generationId },
      forwardContext(req, to.forwardedHost, this.proto, this.deps.trustedProxies),
      to.cookies,
    );
    // In flight, a request is activity: a long stream keeps its sandbox from being frozen or stopped as idle.
    if (attempt === 1) res.once("close", this.deps.targets.socketOpened(target));
    let abort: ((err?: Error) => void) | undefined;
    // A client that goes away mid-request takes its upstream request with it.
    res.on("close", () => {
      if (!res.writableFinished) abort?.();
    });
    this.upstreams.dispatch(
      target.endpoint,
      {
        method: (req.method ?? "GET") as Dispatcher.HttpMethod,
        path: to.path,
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
          const out = downstreamRawHeaders(raw as unknown as Buffer[], this.dropped);
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
            return this.forward(req, res, to, 2);
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
