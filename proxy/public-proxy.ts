import { randomUUID } from "node:crypto";
import type { IncomingMessage, RequestListener, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import type { Dispatcher } from "undici";
import { asHypervisorError, HypervisorError, renderError } from "../hypervisor/errors.js";
import type { AddressSet } from "./addresses.js";
import { signedInUser } from "./auth-gate.js";
import { clientAddressOf, downstreamRawHeaders, upstreamRequestHeaders, type ForwardContext } from "./headers.js";
import { isReserved, normalizePath, routeOf } from "./request-path.js";
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
}

/** Bodiless requests are safe to send again when a pooled keep-alive socket turns out dead. */
const RETRYABLE = new Set(["ECONNRESET", "ECONNREFUSED", "EPIPE", "UND_ERR_SOCKET", "UND_ERR_CLOSED"]);

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
    if (!verdict.ok) return sendError(res, new HypervisorError("bad_request", verdict.reason));
    if (isReserved(verdict.path)) return this.deps.app(req, res);
    const user = signedInUser(this.deps, req.headers.cookie);
    if (!user) return this.refuseAnonymous(req, res, verdict.path + verdict.query);
    const { role, upstreamPath } = routeOf(verdict.path);
    if (this.deps.observe) this.observeResponse(res, role, arrived, this.deps.observe);
    // The page resolves relative URLs against its own; `/dev` must become `/dev/` to stay on dev.
    if (verdict.path === "/dev" && (req.method === "GET" || req.method === "HEAD")) {
      res.writeHead(308, { location: `/dev/${verdict.query}` }).end();
      return;
    }
    void this.forward(req, res, user, role, upstreamPath + verdict.query);
  };

  readonly handleUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    void this.websockets.handle(req, socket, head);
  };

  close(): void {
    for (const timer of this.drains) clearTimeout(timer);
    this.websockets.closeAll(1001);
    this.upstreams.close();
  }

  context(req: IncomingMessage): ForwardContext {
    return {
      clientAddress: clientAddressOf(req.socket.remoteAddress, req.headers["x-forwarded-for"], this.deps.trustedProxies),
      proto: this.proto,
      host: this.deps.publicOrigin.host,
    };
  }

  private observeResponse(res: ServerResponse, role: Role, arrived: number, observe: NonNullable<ProxyDeps["observe"]>): void {
    res.once("close", () => observe(role, res.writableFinished ? res.statusCode : 499, (performance.now() - arrived) / 1000));
  }

  private refuseAnonymous(req: IncomingMessage, res: ServerResponse, target: string): void {
    const wantsHtml = (req.method === "GET" || req.method === "HEAD") && /\btext\/html\b/.test(req.headers.accept ?? "");
    if (wantsHtml) {
      res.writeHead(302, { location: `/login?next=${encodeURIComponent(target)}`, "cache-control": "no-store" }).end();
      return;
    }
    sendError(res, new HypervisorError("unauthorized", "sign in first: no valid session"));
  }

  private async forward(req: IncomingMessage, res: ServerResponse, user: string, role: Role, path: string, attempt = 1): Promise<void> {
    let target: Target;
    try {
      target = await this.deps.targets.ensure(user, role);
    } catch (err) {
      return sendError(res, asHypervisorError(err), this.deps.log);
    }
    const bodiless = req.headers["content-length"] === undefined && req.headers["transfer-encoding"] === undefined;
    const headers = upstreamRequestHeaders(req.headers, { user, role, generation: target.generationId }, this.context(req));
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
          if (attempt === 1 && bodiless && RETRYABLE.has(err.code ?? "")) {
            // A dead pooled socket, or a sandbox that stopped behind our back: look again once.
            if (err.code === "ECONNREFUSED") this.deps.targets.invalidate(target);
            return void this.forward(req, res, user, role, path, 2);
          }
          this.deps.log.warn({ user, role, slot: target.slot, code: err.code }, "upstream unreachable");
          sendError(res, new HypervisorError("upstream_unreachable", `the ${role} sandbox did not answer`));
        },
      },
    );
  }
}

export function sendError(res: ServerResponse, err: HypervisorError, log?: Logger): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const requestId = randomUUID();
  if (err.status >= 500 && err.code === "internal") log?.error({ err: err.cause ?? err, requestId }, "proxy error");
  const { status, headers, body } = renderError(err, requestId);
  res.writeHead(status, { ...headers, "content-length": Buffer.byteLength(body) }).end(body);
}
