import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { connect, type Socket } from "node:net";
import type { Duplex, Readable, Writable } from "node:stream";
import type { Logger } from "pino";
import type { EgressAllowList } from "./allow-list.js";
import { checkDestination, type Forbidden, type Resolver } from "./resolve.js";
import { SandboxShaper } from "./shaper.js";
import type { Caller, EgressTokens } from "./tokens.js";

/** The credential routes plug in here (`$HYPERVISOR_EGRESS_URL/<route>/...`): origin-form requests of an identified sandbox. */
export type RouteHandler = (req: IncomingMessage, res: ServerResponse, caller: Caller) => void;

/** Why a call may not go on: the sandbox reads `message` and `retryAfterSeconds`, the audit `reason`. */
export interface ForwardRefusal {
  message: string;
  retryAfterSeconds: number;
  reason: string;
}

/** A forward-proxy call admitted: its bytes as they pass, and its end, for its budget and its audit row. */
export interface ForwardCall {
  /** Counts bytes either way (0 only asks); the refusal once the user's day is spent: the gateway then cuts the call. */
  flow(bytes: number): ForwardRefusal | undefined;
  /** Totals of the call (what `flow` did not count is counted here); `refused`: answered 429 before any response. */
  end(outcome: { status: number; bytesIn: number; bytesOut: number; reason?: string; refused?: boolean }): void;
}

/**
 * The forward proxy's budgets and audit (the credential routes keep their own), plugged in like
 * the routes. `begin` admits a call to an allowed destination or refuses it (429: the budget
 * says when to retry); `refused` records a call refused before that (destination not allowed).
 */
export interface ForwardAccounting {
  begin(caller: Caller, method: string, host: string): { ok: true; call: ForwardCall } | { ok: false; message: string; retryAfterSeconds: number };
  refused(caller: Caller, method: string, host: string, status: number, reason: string): void;
}

export interface GatewayLimits {
  /** Connections one sandbox (one source address) may hold at once; more are closed at once. */
  perSandbox: number;
  /** No byte either way for this long closes a connection. */
  idleMs: number;
  /** A tunnel or request lasts at most this long. */
  totalMs: number;
  /** Connecting to the upstream. */
  connectMs: number;
  /** Bytes a second one sandbox's forward-proxy calls move, all together and both ways (HYPERVISOR_EGRESS_SANDBOX_RATE); 0: no bound. */
  bytesPerSecond: number;
}

export const DEFAULT_LIMITS: GatewayLimits = { perSandbox: 64, idleMs: 60_000, totalMs: 3_600_000, connectMs: 10_000, bytesPerSecond: 0 };

export interface GatewayOptions {
  tokens: Pick<EgressTokens, "identify">;
  allow: EgressAllowList;
  resolve: Resolver;
  /** The host's own addresses, the gateway's and the registered sandbox hosts': never a destination. */
  own: Forbidden;
  log: Logger;
  limits?: Partial<GatewayLimits>;
  /** Who may connect at all (the listener for remote hosts: their addresses only); absent, anyone the host's rules let through. */
  admits?: (address: string) => boolean;
}

/** Headers that belong to one hop (RFC 9110 §7.6.1) or to the gateway: never forwarded. */
const HOP_HEADERS = new Set([
  "connection",
  "keep-alive",
  "proxy-authorization",
  "proxy-connection",
  "proxy-authenticate",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);
const MAX_HEADER_BYTES = 16 * 1024;

/**
 * The egress gateway (DESIGN §5b): the one place a sandbox in `gateway` mode can connect to. A
 * forward proxy for `CONNECT host:port` (TLS passes through untouched) and absolute-form plain
 * HTTP, to hosts HYPERVISOR_EGRESS_ALLOW names only, each address checked here and connected to as
 * checked; redirects go back to the sandbox as they are (never followed here). Origin-form
 * requests are the credential routes', through `setRouteHandler`.
 *
 * Memory per connection is bounded by the header limit and by streams piped with backpressure;
 * each connection has an idle and a total timeout, and each sandbox a number of connections.
 */
export class EgressGateway {
  private readonly server: Server;
  private readonly limits: GatewayLimits;
  private readonly open = new Map<string, number>();
  private routes: RouteHandler | undefined;
  private accounting: ForwardAccounting | undefined;
  private readonly shaper: SandboxShaper | undefined;

  constructor(private readonly options: GatewayOptions) {
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.shaper = this.limits.bytesPerSecond > 0 ? new SandboxShaper(this.limits.bytesPerSecond) : undefined;
    this.server = createServer({ maxHeaderSize: MAX_HEADER_BYTES, requestTimeout: this.limits.totalMs, headersTimeout: this.limits.connectMs });
    this.server.keepAliveTimeout = this.limits.idleMs;
    this.server.on("connection", (socket: Socket) => this.admit(socket));
    this.server.on("request", (req: IncomingMessage, res: ServerResponse) => void this.request(req, res));
    this.server.on("connect", (req: IncomingMessage, socket: Duplex, head: Buffer) => void this.tunnel(req, socket as Socket, head));
    this.server.on("clientError", (_err, socket: Duplex) => socket.destroy());
  }

  /** The route handler of the credential routes; without one, origin-form requests get 404. */
  setRouteHandler(handler: RouteHandler | undefined): void {
    this.routes = handler;
  }

  /** The forward proxy's budgets and audit; without them, calls are neither counted nor audited. */
  setForwardAccounting(accounting: ForwardAccounting | undefined): void {
    this.accounting = accounting;
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, host, () => {
        this.server.off("error", reject);
        const address = this.server.address();
        resolve({ host, port: typeof address === "object" && address ? address.port : port });
      });
    });
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** Connections held now per source address (for tests and the benchmark). */
  connectionsOf(address: string): number {
    return this.open.get(address) ?? 0;
  }

  private admit(socket: Socket): void {
    const from = socket.remoteAddress ?? "";
    if (this.options.admits && !this.options.admits(from)) {
      socket.destroy();
      return;
    }
    const held = this.open.get(from) ?? 0;
    if (held >= this.limits.perSandbox) {
      socket.destroy();
      return;
    }
    this.open.set(from, held + 1);
    socket.once("close", () => {
      const left = (this.open.get(from) ?? 1) - 1;
      if (left > 0) this.open.set(from, left);
      else this.open.delete(from);
    });
    socket.setTimeout(this.limits.idleMs, () => socket.destroy());
    const total = setTimeout(() => socket.destroy(), this.limits.totalMs);
    total.unref();
    socket.once("close", () => clearTimeout(total));
  }

  private async tunnel(req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
    const refuse = (status: number, reason: string, retryAfterSeconds?: number) => {
      socket.end(rawResponse(status, reason, retryAfterSeconds));
      socket.destroySoon?.();
    };
    const caller = this.options.tokens.identify(req.headers, socket.remoteAddress);
    if (!caller) return refuse(407, "the gateway needs this sandbox's token (HTTPS_PROXY carries it)");
    const target = /^(\[[0-9a-fA-F:.]+\]|[^:[\]\s]+):(\d{1,5})$/.exec(req.url ?? "");
    const port = Number(target?.[2]);
    if (!target || port < 1 || port > 65535) return refuse(400, "CONNECT takes host:port");
    const where = await checkDestination(target[1]!, this.options.allow, this.options.resolve, this.options.own);
    if ("reason" in where) {
      this.refused(caller, "CONNECT", target[1]!, where.status, where.reason);
      return refuse(where.status, where.reason);
    }
    const admitted = this.accounting?.begin(caller, "CONNECT", target[1]!);
    if (admitted && !admitted.ok) return refuse(429, admitted.message, admitted.retryAfterSeconds);
    if (socket.destroyed) return admitted?.call.end({ status: 499, bytesIn: 0, bytesOut: 0, reason: "sandbox went away" });
    // What the tunnel carried, counted at its end (TLS inside is never read).
    const inBefore = socket.bytesRead;
    const outBefore = socket.bytesWritten;
    let status = 200;
    let reason: string | undefined;
    socket.once("close", () =>
      admitted?.call.end({ status, bytesIn: socket.bytesRead - inBefore, bytesOut: socket.bytesWritten - outBefore, ...(reason ? { reason } : {}) }),
    );
    const upstream = connect({ host: where.address, port, timeout: this.limits.connectMs });
    upstream.once("timeout", () => {
      upstream.destroy();
      [status, reason] = [504, "upstream timeout"];
      refuse(504, `${target[1]} did not answer in time`);
    });
    upstream.once("error", () => {
      if (status === 200) [status, reason] = [502, "upstream refused"];
      if (!socket.destroyed && socket.writable) refuse(502, `${target[1]} refused the connection`);
    });
    upstream.once("connect", () => {
      upstream.setTimeout(this.limits.idleMs, () => upstream.destroy());
      socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length) upstream.write(head);
      // pipe: a slow reader on either side pauses the other, so nothing buffers beyond a stream's highWaterMark.
      this.pipe(socket, upstream, caller).on("error", () => socket.destroy());
      this.pipe(upstream, socket, caller).on("error", () => upstream.destroy());
      // The day's bytes bind the tunnel while it runs: counted a read at a time (after the pipe
      // passed it on), the tunnel is closed at the first read that spends them.
      const meter = (chunk: Buffer) => {
        const spent = admitted?.call.flow(chunk.length);
        if (!spent || socket.destroyed) return;
        reason = spent.reason;
        this.options.log.info({ user: caller.user, slot: caller.slot, host: target[1], reason }, "egress tunnel cut");
        socket.destroy();
      };
      socket.on("data", meter);
      upstream.on("data", meter);
      this.options.log.debug({ user: caller.user, slot: caller.slot, host: target[1], port }, "egress tunnel");
    });
    socket.once("close", () => upstream.destroy());
    upstream.once("close", () => socket.destroy());
  }

  private async request(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!req.url?.startsWith("/")) return this.forward(req, res);
    const caller = this.options.tokens.identify(req.headers, req.socket.remoteAddress, true);
    if (!caller) return reply(res, 401, "unauthorized", "a route needs this sandbox's HYPERVISOR_EGRESS_TOKEN (Authorization: Bearer, x-api-key or api-key)");
    if (!this.routes) return reply(res, 404, "not_found", "no such route on this gateway");
    this.routes(req, res, caller);
  }

  /** Absolute-form plain HTTP (`GET http://host/path`): forwarded once, the answer streamed back as it is. */
  private async forward(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const caller = this.options.tokens.identify(req.headers, req.socket.remoteAddress);
    if (!caller) {
      res.setHeader("proxy-authenticate", 'Basic realm="hypervisor egress"');
      return reply(res, 407, "proxy_auth_required", "the gateway needs this sandbox's token (HTTP_PROXY carries it)");
    }
    let url: URL;
    try {
      url = new URL(req.url ?? "");
    } catch {
      return reply(res, 400, "bad_request", "an absolute http:// URL or CONNECT host:port");
    }
    if (url.protocol !== "http:") return reply(res, 400, "bad_request", "https goes through CONNECT (HTTPS_PROXY), not as an absolute URL");
    const method = req.method ?? "GET";
    const where = await checkDestination(url.hostname, this.options.allow, this.options.resolve, this.options.own);
    if ("reason" in where) {
      this.refused(caller, method, url.hostname, where.status, where.reason);
      return reply(res, where.status, "egress_refused", where.reason);
    }
    const admitted = this.accounting?.begin(caller, method, url.hostname);
    if (admitted && !admitted.ok) {
      res.setHeader("retry-after", String(admitted.retryAfterSeconds));
      return reply(res, 429, "rate_limited", admitted.message);
    }
    // Gone while its destination was checked: its `close` already fired, so end the call here.
    if (req.socket.destroyed) return admitted?.call.end({ status: 499, bytesIn: 0, bytesOut: 0, reason: "sandbox went away" });
    let bytesIn = 0;
    let bytesOut = 0;
    // The day's bytes bind the call while it runs: spent before the answer started, the sandbox
    // gets the 429 it would have got at admission; spent while the answer streams, it is cut.
    let cut: { reason: string; refused: boolean } | undefined;
    const stop = (spent: ForwardRefusal) => {
      if (cut) return;
      cut = { reason: spent.reason, refused: !res.headersSent };
      this.options.log.info({ user: caller.user, slot: caller.slot, host: url.hostname, reason: spent.reason }, "egress call cut");
      upstream.destroy();
      if (!cut.refused) return void res.destroy();
      res.setHeader("retry-after", String(spent.retryAfterSeconds));
      reply(res, 429, "rate_limited", spent.message);
    };
    const meter = (chunk: Buffer) => {
      const spent = cut ? undefined : admitted?.call.flow(chunk.length);
      if (spent) stop(spent);
    };
    res.once("close", () =>
      admitted?.call.end({
        status: res.statusCode,
        bytesIn,
        bytesOut,
        ...(cut ? cut : res.writableFinished ? {} : { reason: "cut short" }),
      }),
    );
    const headers: Record<string, string | string[]> = {};
    for (const [name, value] of Object.entries(req.headers)) if (value !== undefined && !HOP_HEADERS.has(name)) headers[name] = value;
    headers.host = url.host;
    const upstream = httpRequest({
      host: where.address,
      port: Number(url.port || 80),
      method: req.method,
      path: `${url.pathname}${url.search}`,
      headers,
      setHost: false,
      timeout: this.limits.connectMs,
    });
    upstream.once("timeout", () => upstream.destroy(new Error("timeout")));
    upstream.once("error", (err) => {
      if (!res.headersSent)
        reply(
          res,
          err.message === "timeout" ? 504 : 502,
          "upstream_failed",
          `${url.hostname} ${err.message === "timeout" ? "did not answer in time" : "refused the connection"}`,
        );
      else res.destroy();
    });
    upstream.once("response", (answer) => {
      // Another call of the user's may have spent the day while this one waited.
      const spent = admitted?.call.flow(0);
      if (spent) return stop(spent);
      upstream.setTimeout(this.limits.idleMs);
      const out: Record<string, string | string[]> = {};
      for (const [name, value] of Object.entries(answer.headers)) if (value !== undefined && !HOP_HEADERS.has(name)) out[name] = value;
      res.writeHead(answer.statusCode ?? 502, out);
      this.pipe(answer, res, caller);
      answer.on("data", (chunk: Buffer) => {
        bytesOut += chunk.length;
        meter(chunk);
      });
    });
    res.once("close", () => upstream.destroy());
    this.pipe(req, upstream, caller);
    req.on("data", (chunk: Buffer) => {
      bytesIn += chunk.length;
      meter(chunk);
    });
  }

  /** `from` piped into `to` with backpressure, no faster than the sandbox's rate when there is one. */
  private pipe<T extends Writable>(from: Readable, to: T, caller: Caller): T {
    if (!this.shaper) return from.pipe(to);
    const shaped = this.shaper.stream(`${caller.user}/${caller.slot}`);
    to.once("close", () => shaped.destroy());
    return from.pipe(shaped).pipe(to);
  }

  private refused(caller: Caller, method: string, host: string, status: number, reason: string): void {
    this.options.log.info({ user: caller.user, slot: caller.slot, method, host: host.slice(0, 100), reason }, "egress refused");
    this.accounting?.refused(caller, method, host.slice(0, 100), status, reason);
  }
}

function reply(res: ServerResponse, status: number, code: string, message: string): void {
  const body = JSON.stringify({ error: { code, message } });
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body), connection: "close" });
  res.end(body);
}

/** A refusal on a CONNECT socket, which has no ServerResponse: a short reason the sandbox's code can read. */
function rawResponse(status: number, reason: string, retryAfterSeconds?: number): string {
  const text =
    { 400: "Bad Request", 403: "Forbidden", 407: "Proxy Authentication Required", 429: "Too Many Requests", 502: "Bad Gateway", 504: "Gateway Timeout" }[
      status
    ] ?? "Error";
  const code = status === 407 ? "proxy_auth_required" : status === 429 ? "rate_limited" : "egress_refused";
  const body = JSON.stringify({ error: { code, message: reason } });
  const auth = status === 407 ? 'Proxy-Authenticate: Basic realm="hypervisor egress"\r\n' : "";
  const retry = retryAfterSeconds === undefined ? "" : `Retry-After: ${retryAfterSeconds}\r\n`;
  return `HTTP/1.1 ${status} ${text}\r\n${auth}${retry}Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}
