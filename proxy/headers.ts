import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders } from "node:http";
import { isIP } from "node:net";
import type { AddressSet } from "./addresses.js";
import { parseCookies, setsOurCookie, type RequestCookies } from "./cookies.js";

/**
 * Hop-by-hop fields (RFC 9110 §7.6.1, plus the de-facto Keep-Alive and Proxy-Connection): they
 * describe one connection and must not be forwarded. Upgrade is handled by the WebSocket path.
 */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "proxy-authorization",
  "proxy-authenticate",
]);
/** Not hop-by-hop, but answered by this server itself (Node sends 100 Continue), so never forwarded. */
const ANSWERED_HERE = new Set(["expect"]);

/**
 * Identity and forwarding fields only we may set, in any spelling: CGI and WSGI stacks map `-`
 * and `_` alike to `_` (RFC 3875 §4.1.18), so `X_Hypervisor_User` would read as ours there.
 * Node lowercases names, and llhttp accepts `_` as a token character (RFC 9110 §5.6.2).
 */
const OURS = /^x[-_](?:hypervisor|forwarded)[-_]/;

/**
 * The client's address (DESIGN §4). The socket peer, unless that peer is a trusted proxy
 * (HYPERVISOR_TRUSTED_PROXIES): then X-Forwarded-For is read from the right, one hop per
 * trusted proxy, and the first address that is not a trusted proxy is the client. Hops to its
 * left are whatever the client itself claimed. A malformed hop ends the walk at the proxy that
 * passed it on. With no trusted proxies (the default) the header is never read.
 */
export function clientAddressOf(peer: string | undefined, forwardedFor: string | string[] | undefined, trusted: AddressSet): string {
  if (!peer) return "unknown";
  if (forwardedFor === undefined || !trusted.has(peer)) return peer;
  // Node joins repeated X-Forwarded-For fields with ", " (RFC 9110 §5.3), in the order received.
  const hops = Array.isArray(forwardedFor) ? forwardedFor.join(",") : forwardedFor;
  let client = peer;
  for (let end = hops.length; end > 0;) {
    const comma = hops.lastIndexOf(",", end - 1);
    const hop = hops.slice(comma + 1, end).trim();
    if (!isIP(hop)) break;
    client = hop;
    if (!trusted.has(hop)) break;
    end = comma;
  }
  return client;
}

export interface Identity {
  user: string;
  role: string;
  generation: number;
}

export interface ForwardContext {
  clientAddress: string;
  proto: string;
  host: string;
}

/**
 * The X-Forwarded-* a request's sandbox receives: its client, and the host it was sent to (the
 * routing decision's, so the Host field is read once) and the public origin's scheme.
 */
export function forwardContext(req: IncomingMessage, host: string, proto: string, trusted: AddressSet): ForwardContext {
  return { clientAddress: clientAddressOf(req.socket.remoteAddress, req.headers["x-forwarded-for"], trusted), proto, host };
}

/** The names a Connection field lists; none to look up for the usual `keep-alive`, itself hop-by-hop. */
function connectionListed(headers: IncomingHttpHeaders): Set<string> | undefined {
  const value = headers.connection;
  if (value === undefined || value === "keep-alive") return undefined;
  const listed = new Set<string>();
  for (const token of (Array.isArray(value) ? value.join(",") : value).split(",")) {
    const t = token.trim().toLowerCase();
    if (t) listed.add(t);
  }
  return listed;
}

/**
 * What the sandbox receives: the client's end-to-end headers minus our credentials and any
 * identity the client tried to claim, plus the identity and X-Forwarded-* we vouch for.
 */
export function upstreamRequestHeaders(
  headers: IncomingHttpHeaders,
  identity: Identity,
  ctx: ForwardContext,
  // The Cookie header read, when the caller has read it already.
  cookies: RequestCookies = parseCookies(headers.cookie),
): OutgoingHttpHeaders {
  const listed = connectionListed(headers);
  const out: OutgoingHttpHeaders = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || HOP_BY_HOP.has(name) || ANSWERED_HERE.has(name) || listed?.has(name)) continue;
    // The charCode test keeps the regular expression off every header that does not start with x.
    if (name === "authorization" || name === "cookie" || name === "forwarded" || (name.charCodeAt(0) === 0x78 && OURS.test(name))) continue;
    out[name] = value;
  }
  const cookie = cookies.forwarded;
  if (cookie) out.cookie = cookie;
  // Replaced, not appended: only the address clientAddressOf() vouches for goes upstream.
  out["x-forwarded-for"] = ctx.clientAddress;
  out["x-forwarded-proto"] = ctx.proto;
  out["x-forwarded-host"] = ctx.host;
  out["x-hypervisor-user"] = identity.user;
  out["x-hypervisor-role"] = identity.role;
  out["x-hypervisor-generation"] = String(identity.generation);
  return out;
}

/**
 * Response fields that act on a whole origin, which a sandbox served on the public origin (path
 * mode) shares with the account pages: Service-Worker-Allowed would let its worker's scope cover
 * them (W3C Service Workers, "Update" step on the max scope), Clear-Site-Data would clear the
 * origin's data (W3C Clear Site Data §3.1). On its own origin a sandbox may send both.
 */
export const ORIGIN_WIDE = new Set(["service-worker-allowed", "clear-site-data"]);

/**
 * The sandbox's response headers (raw name/value pairs, as the upstream client reports them)
 * minus hop-by-hop fields, the `dropped` ones, and any Set-Cookie for our own cookies (DESIGN §5:
 * a sandbox can never set, change or clear hv_session or hv_sandbox), as a flat list for
 * writeHead: repeated fields such as Set-Cookie stay separate. Every response passes here, so it
 * allocates only the output and, when there is a Connection field, the set of the names it lists.
 */
export function downstreamRawHeaders(raw: Buffer[], dropped?: ReadonlySet<string>): string[] {
  let listed: Set<string> | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i]!.length !== 10 || raw[i]!.toString("latin1").toLowerCase() !== "connection") continue;
    listed ??= new Set();
    for (const t of raw[i + 1]!.toString("latin1").split(",")) if (t.trim()) listed.add(t.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toString("latin1").toLowerCase();
    if (HOP_BY_HOP.has(name) || listed?.has(name) || dropped?.has(name)) continue;
    const value = raw[i + 1]!.toString("latin1");
    if (name === "set-cookie" && setsOurCookie(value)) continue;
    out.push(name, value);
  }
  return out;
}
