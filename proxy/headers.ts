import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import { isIP } from "node:net";
import type { AddressSet } from "./addresses.js";
import { stripSessionCookie } from "./cookies.js";

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

function connectionListed(headers: IncomingHttpHeaders): Set<string> {
  const listed = new Set<string>();
  const value = headers.connection;
  for (const token of (Array.isArray(value) ? value.join(",") : (value ?? "")).split(",")) {
    const t = token.trim().toLowerCase();
    if (t) listed.add(t);
  }
  return listed;
}

/**
 * What the sandbox receives: the client's end-to-end headers minus our credentials and any
 * identity the client tried to claim, plus the identity and X-Forwarded-* we vouch for.
 */
export function upstreamRequestHeaders(headers: IncomingHttpHeaders, identity: Identity, ctx: ForwardContext): OutgoingHttpHeaders {
  const listed = connectionListed(headers);
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || ANSWERED_HERE.has(name) || listed.has(name)) continue;
    if (name === "authorization" || name === "cookie" || name.startsWith("x-hypervisor-") || name.startsWith("x-forwarded-") || name === "forwarded") continue;
    out[name] = value;
  }
  const cookie = stripSessionCookie(headers.cookie);
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
 * The sandbox's response headers (raw name/value pairs, as the upstream client reports them)
 * minus hop-by-hop fields, as a flat list for writeHead: repeated fields such as Set-Cookie stay
 * separate.
 */
export function downstreamRawHeaders(raw: Buffer[]): string[] {
  const pairs: [string, string][] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) pairs.push([raw[i]!.toString("latin1").toLowerCase(), raw[i + 1]!.toString("latin1")]);
  const listed = new Set<string>();
  for (const [name, value] of pairs) {
    if (name === "connection") for (const t of value.split(",")) if (t.trim()) listed.add(t.trim().toLowerCase());
  }
  const out: string[] = [];
  for (const [name, value] of pairs) {
    if (!HOP_BY_HOP.has(name) && !listed.has(name)) out.push(name, value);
  }
  return out;
}
