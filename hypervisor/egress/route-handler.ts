import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import { request as httpsRequest, type Agent } from "node:https";
import { isIP } from "node:net";
import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import type { ErrorCode } from "../errors.js";
import type { BudgetLease, Budgets } from "./budgets.js";
import { auditPath, type EgressAudit, type EgressCaller } from "./egress-audit.js";
import type { EgressRoute } from "./routes-file.js";
import type { EgressRoutes } from "./secrets.js";
import { scrubText, SecretScrubber } from "./secret-scrubber.js";

/** What the gateway hands a route call after it identified the caller by its token. */
export type RouteHandler = (req: IncomingMessage, res: ServerResponse, caller: EgressCaller) => void;

/** A user's own key for a route (§5b user keys); undefined when they stored none. */
export interface UserKeyLookup {
  keyFor(user: string, route: string): string | undefined;
}

export interface RouteHandlerDeps {
  routes: EgressRoutes;
  budgets: Budgets;
  audit: EgressAudit;
  log: Logger;
  userKeys?: UserKeyLookup | undefined;
  /** TLS to upstreams: the default trust store unless a test passes its CA. Verification is never off. */
  tls?: { ca?: string | Buffer; agent?: Agent } | undefined;
  now?: () => number;
}

/** Credentials a sandbox may send (its token, or a key it should not have): never forwarded. */
const CREDENTIAL_HEADERS = ["authorization", "x-api-key", "api-key", "cookie", "proxy-authorization"];
/** RFC 9110 §7.6.1 connection-specific fields, and the forms proxies add. */
const HOP_BY_HOP = ["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade"];
const DROPPED_REQUEST = new Set([
  ...CREDENTIAL_HEADERS,
  ...HOP_BY_HOP,
  "host",
  "accept-encoding",
  "forwarded",
  "x-forwarded-for",
  "x-forwarded-host",
  "x-forwarded-proto",
  "x-real-ip",
]);
const DROPPED_RESPONSE = new Set([...HOP_BY_HOP]);

/** Headers named in `Connection` are that hop's too (RFC 9110 §7.6.1). */
function connectionTokens(headers: IncomingHttpHeaders): Set<string> {
  const value = headers.connection;
  return new Set(
    (value ?? "")
      .split(",")
      .map((t) => t.trim().toLowerCase())
      .filter(Boolean),
  );
}

/** `/<route>/rest?query` → the route name and the rest (path and query as sent). */
function splitRoute(url: string): { name: string; rest: string } | undefined {
  const m = /^\/([^/?#]+)(.*)$/s.exec(url);
  if (!m) return undefined;
  return { name: m[1]!, rest: m[2] === "" ? "/" : m[2]!.startsWith("/") ? m[2]! : `/${m[2]!}` };
}

/** A path that would climb out of the route's base path (`..`, encoded or not) or smuggle separators. */
function unsafePath(rest: string): boolean {
  const path = rest.split(/[?#]/, 1)[0]!;
  if (/%2f|%5c|\\/i.test(path)) return true;
  return path.split("/").some((seg) => {
    const decoded = seg.replace(/%2e/gi, ".");
    return decoded === "." || decoded === "..";
  });
}

/**
 * The route call (DESIGN §5b): strips what the sandbox sent as credentials, injects the route's
 * secret (the user's own key on a `userKeys` route when they stored one, else the operator's),
 * forwards over TLS with the certificate verified, streams the answer with the secret masked
 * wherever it appears, and never follows a redirect: a 3xx passes to the sandbox with its
 * Location as the upstream wrote it (masked like any header), because following it is the
 * sandbox's own next request, which the gateway checks like any other; the route's secret never
 * goes anywhere but the route's upstream.
 */
export function createRouteHandler(deps: RouteHandlerDeps): RouteHandler {
  const now = deps.now ?? Date.now;
  return (req, res, caller) => {
    // The gateway's root lists the route names, so sandbox code can say which calls it has
    // (names only: upstreams and secrets are the operator's). Not a call to a route: no audit row.
    if (req.url === "/" && (req.method === "GET" || req.method === "HEAD")) {
      req.resume();
      const body = JSON.stringify({ routes: deps.routes.names() });
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body), "cache-control": "no-store" });
      res.end(req.method === "GET" ? body : undefined);
      return;
    }
    const started = now();
    const requestId = randomUUID();
    const method = req.method ?? "GET";
    const url = req.url ?? "/";
    let target = "route:?";
    let metricRoute = "unknown";
    let bytesIn = 0;
    let bytesOut = 0;
    let lease: BudgetLease | undefined;
    let finished = false;
    const parts = splitRoute(url);

    const finish = (status: number, decision: "allowed" | "refused", reason?: string) => {
      if (finished) return;
      finished = true;
      // What the flow did not count (an error's body) is counted here.
      lease?.addBytes(Math.max(0, bytesIn + bytesOut - lease.bytes));
      lease?.release();
      // The path the upstream saw, not the route's prefix; the audit cuts the query off.
      const event = {
        caller,
        target,
        route: metricRoute,
        method,
        path: parts?.rest ?? url,
        status,
        bytesIn,
        bytesOut,
        durationMs: now() - started,
        decision,
        reason,
      };
      deps.audit.record(event);
      deps.log.debug({ ...event, path: auditPath(event.path), requestId }, "egress route call");
    };

    const refuse = (status: number, code: ErrorCode, message: string, reason: string, headers: OutgoingHttpHeaders = {}) => {
      const body = JSON.stringify({ error: { code, message, requestId } });
      if (!res.headersSent) {
        res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body), "cache-control": "no-store", ...headers });
        res.end(body);
        bytesOut += Buffer.byteLength(body);
      } else {
        res.destroy();
      }
      // The sandbox's body is not read: drain it so the connection is not left half-read.
      req.resume();
      finish(status, "refused", reason);
    };

    const route = parts ? deps.routes.route(parts.name) : undefined;
    if (!parts || !route) {
      target = parts ? `route:${parts.name.slice(0, 64)}` : target;
      return refuse(
        404,
        "not_found",
        `no egress route ${parts ? `"${parts.name.slice(0, 64)}"` : "named"}; the routes are ${deps.routes.names().join(", ") || "none"}`,
        "unknown route",
      );
    }
    target = `route:${route.name}`;
    metricRoute = route.name;
    if (unsafePath(parts.rest)) return refuse(400, "validation_failed", "the path may not contain dot segments or encoded slashes", "unsafe path");
    if (req.headers.upgrade) return refuse(400, "bad_request", "routes carry HTTP requests, not protocol upgrades", "upgrade");

    const userKey = route.userKeys ? deps.userKeys?.keyFor(caller.user, route.name) : undefined;
    const secret = userKey ?? deps.routes.secretOf(route);
    if (secret === undefined)
      return refuse(
        503,
        "not_ready",
        `route "${route.name}" has no key loaded; ask the operator${route.userKeys ? ", or store your own key on your account page" : ""}`,
        "no secret",
      );

    const admitted = deps.budgets.acquire(caller.user, target, route);
    if (!admitted.ok) return refuse(429, admitted.code, admitted.message, `budget: ${admitted.limit}`, { "retry-after": String(admitted.retryAfterSeconds) });
    lease = admitted.lease;

    forward(route, parts.rest, secret, userKey === undefined ? "operator" : "user");

    function forward(route: EgressRoute, rest: string, secret: string, keyOwner: "operator" | "user"): void {
      const base = route.upstream.pathname.replace(/\/+$/, "");
      const headers = requestHeaders(req.headers, route, secret);
      const upstreamReq = httpsRequest({
        protocol: "https:",
        hostname: route.upstream.hostname.replace(/^\[|\]$/g, ""),
        port: route.upstream.port || 443,
        // SNI names a host, never an address (RFC 6066 §3).
        ...(isIP(route.upstream.hostname.replace(/^\[|\]$/g, "")) ? {} : { servername: route.upstream.hostname }),
        method,
        path: `${base}${rest}`,
        headers,
        rejectUnauthorized: true,
        ...(deps.tls?.ca ? { ca: deps.tls.ca } : {}),
        ...(deps.tls?.agent ? { agent: deps.tls.agent } : {}),
      });
      const secretBytes = Buffer.from(secret);

      // Until the upstream's headers: one deadline. After: the longest silence allowed.
      const responseTimer = setTimeout(
        () => fail(504, "deadline_exceeded", "the upstream did not answer in time", "upstream response timeout"),
        route.responseTimeoutMs,
      );
      const fail = (status: number, code: ErrorCode, message: string, reason: string, headers?: OutgoingHttpHeaders) => {
        clearTimeout(responseTimer);
        upstreamReq.destroy();
        refuse(status, code, message, reason, headers);
      };
      // The day's bytes bind the call while it runs (the user's other calls spend them too):
      // spent before the answer started, the sandbox gets the 429 admission would have given;
      // spent while it streams, the answer is cut.
      // Bytes that pass once the call is over (an upload drained after a refusal) go nowhere and count for nothing.
      const meter = (bytes: number): boolean => {
        const refusal = finished ? undefined : lease?.addBytes(bytes);
        if (!refusal) return false;
        deps.log.info({ route: route.name, user: caller.user, requestId }, "egress route call cut: daily bytes spent");
        if (!res.headersSent) fail(429, refusal.code, refusal.message, `budget: ${refusal.limit}`, { "retry-after": String(refusal.retryAfterSeconds) });
        else {
          finish(res.statusCode, "allowed", `budget: ${refusal.limit}`);
          // The upstream's answer goes with its request's socket.
          upstreamReq.destroy();
          res.destroy();
        }
        return true;
      };

      upstreamReq.on("error", (err: NodeJS.ErrnoException) => {
        if (finished) return;
        const tls = /CERT|SELF_SIGNED|UNABLE_TO|ERR_TLS/.test(err.code ?? "");
        deps.log.warn({ route: route.name, user: caller.user, code: err.code, requestId }, "egress route: upstream failed");
        fail(
          502,
          "upstream_unreachable",
          tls ? "the upstream's certificate was not trusted" : "the upstream could not be reached",
          tls ? "upstream certificate" : "upstream error",
        );
      });

      req.pipe(upstreamReq);
      req.on("data", (chunk: Buffer) => {
        bytesIn += chunk.length;
        meter(chunk.length);
      });
      // The caller went away: the upstream call stops too (and the budget is given back).
      res.on("close", () => {
        if (!res.writableFinished) {
          clearTimeout(responseTimer);
          upstreamReq.destroy();
          finish(499, "allowed", "caller went away");
        }
      });

      upstreamReq.on("response", (upstream) => {
        clearTimeout(responseTimer);
        if (finished) return upstream.destroy();
        if (meter(0)) return;
        const encoding = (upstream.headers["content-encoding"] ?? "identity").toLowerCase();
        // The body is searched for the secret: a compressed one could carry it hidden.
        if (encoding !== "identity") {
          upstream.destroy();
          return fail(502, "upstream_unreachable", "the upstream answered compressed although asked not to", "compressed response");
        }
        // A timer of its own, not the socket's: a kept-alive socket would carry it to the next request.
        let idle: NodeJS.Timeout | undefined;
        const quiet = () => {
          clearTimeout(idle);
          idle = setTimeout(() => {
            deps.log.warn({ route: route.name, user: caller.user, requestId }, "egress route: upstream went silent");
            upstream.destroy();
            res.destroy();
            finish(504, "allowed", "upstream idle timeout");
          }, route.idleTimeoutMs);
        };
        quiet();
        upstream.on("data", quiet);
        upstream.on("close", () => clearTimeout(idle));
        const status = upstream.statusCode ?? 502;
        res.writeHead(status, responseHeaders(upstream.headers, secret));
        // Server-sent events: every chunk goes out as it comes (no Nagle, no buffering here).
        res.socket?.setNoDelay(true);
        res.flushHeaders();
        const scrubber = new SecretScrubber(secretBytes);
        upstream.pipe(scrubber).pipe(res);
        scrubber.on("data", (chunk: Buffer) => {
          bytesOut += chunk.length;
          meter(chunk.length);
        });
        upstream.on("error", () => res.destroy());
        res.on("finish", () =>
          finish(status, "allowed", status >= 300 && status < 400 ? "redirect passed on, not followed" : keyOwner === "user" ? "user key" : undefined),
        );
      });
    }
  };
}

/** The sandbox's headers without its credentials, hop-by-hop fields or forwarding claims, with the route's credential set. */
function requestHeaders(incoming: IncomingHttpHeaders, route: EgressRoute, secret: string): OutgoingHttpHeaders {
  const drop = connectionTokens(incoming);
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(incoming)) {
    if (value === undefined || DROPPED_REQUEST.has(name) || drop.has(name) || name === route.header) continue;
    out[name] = value;
  }
  out.host = route.upstream.host;
  // Identity only: the answer is searched for the secret, which compression would hide.
  out["accept-encoding"] = "identity";
  out[route.header] = route.value.split("{secret}").join(secret);
  if (incoming["transfer-encoding"] !== undefined && incoming["content-length"] === undefined) out["transfer-encoding"] = "chunked";
  return out;
}

/** The upstream's headers without hop-by-hop fields, the secret masked in every value (Location too). */
function responseHeaders(incoming: IncomingHttpHeaders, secret: string): OutgoingHttpHeaders {
  const drop = connectionTokens(incoming);
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(incoming)) {
    if (value === undefined || DROPPED_RESPONSE.has(name) || drop.has(name)) continue;
    out[name] = Array.isArray(value) ? value.map((v) => scrubText(v, secret)) : scrubText(value, secret);
  }
  return out;
}
