import { randomUUID } from "node:crypto";
import { STATUS_CODES, type IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { WebSocket, WebSocketServer, type RawData } from "ws";
import { asHypervisorError, HypervisorError, renderError } from "../hypervisor/errors.js";
import type { AddressSet } from "./addresses.js";
import { forwardContext, upstreamRequestHeaders } from "./headers.js";
import type { RoutingDecision, RoutingRules } from "./routing-decision.js";
import type { Role, RouteSource, Target, TargetSource } from "./target.js";
import type { Limit, UserLimits } from "./user-limits.js";
import { checkHandshake, WEBSOCKET_VERSION } from "./ws-handshake.js";

/** The handshake fields ws sets itself for the upstream leg (RFC 6455 §4.1). */
const HANDSHAKE = new Set(["host", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"]);
/**
 * What one direction of a bridge may hold. A leg reading faster than the other writes is paused
 * past HIGH_WATER_BYTES until its messages are written out, so a client that stops reading costs
 * its sandbox's socket, not this process's memory. A message is held whole, so at most about
 * HIGH_WATER_BYTES + MAX_MESSAGE_BYTES wait per direction; a bigger message closes the bridge
 * with 1009 (RFC 6455 §7.4.1, message too big).
 */
const HIGH_WATER_BYTES = 1024 * 1024;
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
/**
 * What the messages waiting past HIGH_WATER_BYTES on all of one user's bridges may hold together:
 * room for one message of the largest size and then some. A message that would go past it is
 * dropped and its bridge ends (1013, Try Again Later, RFC 6455 §7.4.1 and the IANA registry), so
 * the daemon's memory grows with the number of users, never with one user's bridges.
 */
const USER_HELD_BYTES = 2 * MAX_MESSAGE_BYTES;
const VERSION_REFUSED = { "sec-websocket-version": WEBSOCKET_VERSION };

/** What forwarding needs: the routing rules, targets, the route table's changes, and the client address rule. */
export interface WebSocketDeps extends RoutingRules {
  targets: TargetSource;
  routes: RouteSource;
  /** How long WebSockets may stay on a replaced target after a swap (HYPERVISOR_DRAIN_MS). */
  drainMs: number;
  log: Logger;
  /** Peers whose X-Forwarded-For is believed (HYPERVISOR_TRUSTED_PROXIES). */
  trustedProxies: AddressSet;
  /** Per-user bounds (HYPERVISOR_USER_MAX_REQUESTS, HYPERVISOR_USER_MAX_WEBSOCKETS); without them, none. */
  userLimits?: Record<Limit, number>;
  /**
   * Called for each request or WebSocket refused past its user's bound, with the client's address:
   * the daemon counts and audits them. Optional, so the data plane never depends on those modules.
   */
  onLimited?: (user: string, limit: Limit, clientAddress: string) => void;
}

export interface Bridge {
  target: Target;
  role: Role;
  /** The session that opened it: the bridge lives no longer than that session. */
  sessionId: string;
  client: WebSocket;
  upstream: WebSocket;
}

/**
 * WebSocket forwarding. Both legs are real WebSocket endpoints (not a byte splice) so the proxy
 * can close a leg with a proper close frame, e.g. 1012 after a swap's drain window, while
 * messages, ping/pong and close codes pass through unchanged.
 */
export class WebSocketForwarder {
  private readonly server = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    maxPayload: MAX_MESSAGE_BYTES,
    autoPong: false,
    // Agree to exactly the subprotocol the sandbox chose.
    handleProtocols: (_protocols, req) => (req as IncomingMessage & { upstreamProtocol?: string }).upstreamProtocol || false,
  });
  private readonly bridges = new Set<Bridge>();
  /** Set by closeAll: a handshake that completes afterwards is closed at once, with the same code. */
  private closedWith: number | undefined;
  private readonly drains = new Set<NodeJS.Timeout>();
  private readonly proto: string;

  constructor(
    private readonly deps: WebSocketDeps,
    private readonly routing: RoutingDecision,
    private readonly limits: UserLimits,
  ) {
    this.proto = deps.publicOrigin.protocol.replace(":", "");
    deps.routes.onRouteChange((user) => this.drainAfterSwap(user));
    deps.routes.onSlotReplaced?.((user, slot) => {
      const closed = this.closeWhere((target) => target.user === user && target.slot === slot, 1012, "replaced");
      if (closed) this.deps.log.info({ user, slot, closed }, "closed websockets of a sandbox replaced in place");
    });
  }

  /**
   * In-flight HTTP requests finish on the target they started on by themselves; WebSockets
   * routed by the old mapping get the drain window, then close with 1012 "Service Restart"
   * (RFC 6455 §7.4.1, IANA registry) so clients reconnect to the new target.
   */
  private drainAfterSwap(user: string): void {
    const stale = (target: Target, role: Role) => target.user === user && this.deps.routes.slotOf(user, role) !== target.slot;
    // Exactly the sockets this swap made stale get the full window; a later swap drains its own.
    const draining = this.select(stale);
    if (draining.size === 0) return;
    const timer = setTimeout(() => {
      this.drains.delete(timer);
      // Still stale: a swap back within the window makes a socket current again.
      const closed = this.closeWhere((target, role, bridge) => draining.has(bridge) && stale(target, role), 1012, "swapped");
      if (closed) this.deps.log.info({ user, closed }, "drained websockets after swap");
    }, this.deps.drainMs);
    timer.unref();
    this.drains.add(timer);
  }

  async handle(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on("error", destroyOnError);
    const handshake = checkHandshake(req.method, req.headers);
    if (!handshake.ok) {
      // RFC 6455 §4.4: a refused version is answered with the version this server speaks.
      return refuse(socket, new HypervisorError("bad_request", handshake.reason), handshake.badVersion ? VERSION_REFUSED : undefined);
    }
    const to = this.routing.decide(req, true);
    if (to.kind === "refuse") return refuse(socket, to.error);
    const { user, role, sessionId } = to;
    const context = forwardContext(req, to.forwardedHost, this.proto, this.deps.trustedProxies);
    // Held from here until the client's connection ends, whatever ends it: dial, refusal or bridge.
    const release = this.limits.acquire(user, "websockets");
    if (!release) {
      this.deps.onLimited?.(user, "websockets", context.clientAddress);
      return refuse(socket, this.limits.refusal("websockets"));
    }
    socket.once("close", release);

    let target: Target;
    try {
      target = await this.deps.targets.ensure(user, role);
    } catch (err) {
      return refuse(socket, asHypervisorError(err));
    }
    // The client may have left while its sandbox started: then there is nothing to dial for.
    if (socket.destroyed) return;
    const headers: Record<string, string | string[]> = {};
    for (const [name, value] of Object.entries(upstreamRequestHeaders(req.headers, { user, role, generation: target.generationId }, context, to.cookies))) {
      if (!HANDSHAKE.has(name) && value !== undefined) headers[name] = typeof value === "number" ? String(value) : value;
    }
    const upstream = new WebSocket(`ws://${target.endpoint.host}:${target.endpoint.port}${to.path}`, handshake.protocols, {
      headers,
      perMessageDeflate: false,
      maxPayload: MAX_MESSAGE_BYTES,
      autoPong: false,
      handshakeTimeout: 10_000,
    });
    const unexpected = (_r: unknown, res: IncomingMessage) => {
      // The sandbox refused the upgrade: the client gets its status, not a fake 101.
      res.resume();
      refuse(
        socket,
        new HypervisorError(res.statusCode === 404 ? "not_found" : "upstream_unreachable", `the ${role} sandbox refused the WebSocket (${res.statusCode})`),
      );
      upstream.terminate();
    };
    upstream.once("unexpected-response", unexpected);
    // After the handshake, errors belong to the bridge; before it, the client gets a 502.
    const failed = () => refuse(socket, new HypervisorError("upstream_unreachable", `the ${role} sandbox did not accept the WebSocket`));
    upstream.once("error", failed);
    // Until the bridge exists the upstream leg is only ours: a client that leaves during the dial
    // must not leave it open on the sandbox.
    const abandon = () => upstream.terminate();
    socket.once("close", abandon);
    upstream.once("open", () => {
      // Every closure of this handshake shares one scope, which holds the request and its head:
      // none may stay registered on a leg for as long as the bridge lives.
      upstream.off("unexpected-response", unexpected);
      upstream.off("error", failed);
      upstream.on("error", ignoreError);
      (req as IncomingMessage & { upstreamProtocol?: string }).upstreamProtocol = upstream.protocol;
      socket.off("close", abandon);
      if (socket.destroyed) return upstream.terminate();
      // A session that ended during the dial was announced before this bridge could hear of it.
      const now = this.routing.decide(req, true);
      if (now.kind === "refuse" || now.sessionId !== sessionId) {
        upstream.terminate();
        return refuse(socket, new HypervisorError("unauthorized", "the session ended; sign in again"));
      }
      let bridged = false;
      this.server.handleUpgrade(req, socket, head, (client) => {
        bridged = true;
        this.bridge({ target, role, sessionId, client, upstream });
      });
      // handleUpgrade answers synchronously; a socket it will not take (e.g. the client already
      // half-closed it) gets no callback, and then no bridge will ever own the upstream leg.
      if (!bridged) upstream.terminate();
    });
  }

  select(match: (target: Target, role: Role) => boolean): Set<Bridge> {
    return new Set([...this.bridges].filter((b) => match(b.target, b.role)));
  }

  /** Closes every bridged socket that matches, e.g. those on the old target after a drain window. */
  closeWhere(match: (target: Target, role: Role, bridge: Bridge) => boolean, code: number, reason = ""): number {
    let n = 0;
    for (const b of this.bridges) {
      if (!match(b.target, b.role, b)) continue;
      n++;
      closeLeg(b.client, code, reason);
      closeLeg(b.upstream, 1001, "proxy closing");
    }
    return n;
  }

  /**
   * Closes the bridges a session opened, once that session has ended (logout, revocation,
   * expiry): 1008, policy violation (RFC 6455 §7.4.1), as the client is no longer signed in.
   * A scan, like the session store's: sessions end rarely, and the set is bounded by open sockets.
   */
  closeSession(sessionId: string): number {
    return this.closeWhere((_target, _role, b) => b.sessionId === sessionId, 1008, "session ended");
  }

  closeAll(code: number): void {
    for (const timer of this.drains) clearTimeout(timer);
    this.closedWith = code;
    this.closeWhere(() => true, code, "hypervisor shutting down");
  }

  openCount(): number {
    return this.bridges.size;
  }

  /** What this user's bridges hold in this process, waiting to be written to either leg. */
  private heldFor(user: string): number {
    let n = 0;
    for (const b of this.bridges) if (b.target.user === user) n += b.client.bufferedAmount + b.upstream.bufferedAmount;
    return n;
  }

  private bridge(b: Bridge): void {
    const { client, upstream } = b;
    this.bridges.add(b);
    const release = this.deps.targets.socketOpened(b.target);
    const pipe = (from: WebSocket, to: WebSocket) => {
      const resume = () => from.resume();
      from.on("message", (data: RawData, isBinary: boolean) => {
        if (to.readyState !== WebSocket.OPEN) return;
        // Messages arrive as one Buffer (binaryType "nodebuffer", the default).
        const size = (data as Buffer).length;
        if (to.bufferedAmount + size <= HIGH_WATER_BYTES) return to.send(data, { binary: isBinary });
        if (this.heldFor(b.target.user) + size > USER_HELD_BYTES) {
          // `to` is not reading: a close frame would wait behind what it has not read, so it is cut.
          to.terminate();
          return closeLeg(from, 1013, "too much waiting for a peer that does not read");
        }
        // Backpressure: `from` is not read again until this message has been written out
        // (ws calls back once the socket has taken it, or failed to).
        from.pause();
        to.send(data, { binary: isBinary }, resume);
      });
      from.on("ping", (data) => to.readyState === WebSocket.OPEN && to.ping(data));
      from.on("pong", (data) => to.readyState === WebSocket.OPEN && to.pong(data));
      from.on("close", (code, reason) => closeLike(to, code, reason));
      from.on("error", (err: Error & { code?: string }) => {
        // ws has closed `from` with 1009 over a message past maxPayload: the other end is told
        // the same instead of being dropped. Any other error broke the leg.
        if (err.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH") closeLeg(to, 1009, "message too big");
        else to.terminate();
      });
    };
    pipe(client, upstream);
    pipe(upstream, client);
    client.once("close", () => {
      this.bridges.delete(b);
      release();
    });
    if (this.closedWith !== undefined) this.closeAll(this.closedWith);
  }
}

function destroyOnError(this: Duplex): void {
  this.destroy();
}

/** A leg past its handshake has the bridge's error handler; this one only keeps a late error from being unhandled. */
function ignoreError(): void {}

/** Passes a close code on (RFC 6455 §7.4): 1005/1006 are never sent on the wire, only reported. */
function closeLike(ws: WebSocket, code: number, reason: Buffer): void {
  if (ws.readyState === WebSocket.CLOSED || ws.readyState === WebSocket.CLOSING) return;
  if (code === 1006) return ws.terminate();
  try {
    closeLeg(ws, code === 1005 ? undefined : code, reason);
  } catch {
    closeLeg(ws);
  }
}

/**
 * Starts a leg's closing handshake. A leg paused for backpressure is read again, or the peer's
 * closing frame would go unread and the socket linger until ws's close timeout.
 */
function closeLeg(ws: WebSocket, code?: number, reason?: string | Buffer): void {
  if (ws.readyState === WebSocket.CLOSED || ws.readyState === WebSocket.CLOSING) return;
  ws.resume();
  ws.close(code, reason);
}

/** Answers an upgrade with a plain HTTP error; no byte has reached a sandbox. */
function refuse(socket: Duplex, err: HypervisorError, extra?: Record<string, string>): void {
  if (socket.destroyed) return;
  const { status, headers, body } = renderError(err, randomUUID());
  const fields = Object.entries({ ...headers, ...extra, "content-length": String(Buffer.byteLength(body)), connection: "close" }).map(
    ([name, value]) => `${name}: ${value}\r\n`,
  );
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}\r\n${fields.join("")}\r\n${body}`);
}
